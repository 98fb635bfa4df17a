//go:build sessionids_faults

package idempotency

import (
	"os"
	"syscall"
)

// Built with -tags sessionids_faults: FaultEnv arms the hook.
func init() {
	if os.Getenv(FaultEnv) == faultCrashAfterPrompt {
		afterPrompt = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	}
}
