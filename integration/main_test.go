// Package integration runs the session_ids module in the real Caddy binary in
// front of a real, stock `opencode serve` from npm. The only fake is the
// language model (fakemodel_test.go).
package integration

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sessionid-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if opencodeBin, err = findOrInstallOpencode(OpencodeVersion); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if caddyBin, err = findOrBuildCaddy(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if faultyCaddyBin, err = findOrBuildFaultyCaddy(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if nativeBin, err = build(dir, "nativeserver"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
