package caddymodule

// The test-only fault of forks, armed like idempotency's (see
// idempotency.FaultEnv) in binaries built with the build tag
// sessionids_faults: with the value "crash-after-fork", the Caddy process
// kills itself with SIGKILL right after the upstream has made a fork under a
// chosen id and before the fork is tagged with it: the moment whose crash
// leaves a fork that names its parent, which the retry must find.
const faultCrashAfterFork = "crash-after-fork"

// afterFork is called between the upstream's fork and its tagging; nil
// unless a fault hook armed it.
var afterFork func()
