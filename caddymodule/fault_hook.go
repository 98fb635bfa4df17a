//go:build sessionids_faults

package caddymodule

import (
	"os"
	"syscall"

	"github.com/sessionid/caddy-sessionid/idempotency"
)

// Built with -tags sessionids_faults: idempotency.FaultEnv arms the hook.
func init() {
	if os.Getenv(idempotency.FaultEnv) == faultCrashAfterFork {
		afterFork = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	}
}
