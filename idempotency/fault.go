package idempotency

// FaultEnv names the environment variable of a test-only fault hook. It is
// compiled only into binaries built with the build tag sessionids_faults
// (fault_hook.go), as the integration tests build theirs; the binary users
// build with xcaddy.sh has no hook and ignores the variable. With the value
// "crash-after-prompt", the Caddy process kills itself with SIGKILL right
// after the upstream has answered a keyed prompt and before the answer is
// recorded: the one moment a crash could make a retry prompt twice, which the
// integration tests provoke on purpose. The handler logs an error when the
// hook is armed.
const FaultEnv = "SESSION_IDS_TEST_FAULT"

// faultCrashAfterPrompt is the fault of keyed prompts (forks have their own:
// caddymodule.faultCrashAfterFork).
const faultCrashAfterPrompt = "crash-after-prompt"

// afterPrompt is called between the upstream's answer to a keyed prompt and
// its record; nil unless a fault hook armed it.
var afterPrompt func()
