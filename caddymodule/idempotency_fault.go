package caddymodule

import (
	"os"
	"syscall"

	"go.uber.org/zap"
)

// FaultEnv names the environment variable of a test-only fault hook, read
// when the handler is provisioned. With the value "crash-after-prompt", the
// Caddy process kills itself with SIGKILL right after the upstream has
// answered a keyed prompt and before the answer is recorded: the one moment
// a crash could make a retry prompt twice, which the integration tests
// provoke on purpose. Never set it in production; the handler logs an error
// when it is set.
const FaultEnv = "SESSION_IDS_TEST_FAULT"

// faultCrashAfterPrompt is the only fault.
const faultCrashAfterPrompt = "crash-after-prompt"

// readFaultHook returns the hook to call at the fault's point, or nil.
func readFaultHook(log *zap.Logger) func() {
	if os.Getenv(FaultEnv) != faultCrashAfterPrompt {
		return nil
	}
	log.Error("test-only fault hook enabled: this process will kill itself after forwarding a keyed prompt", zap.String(FaultEnv, faultCrashAfterPrompt))
	return func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
}
