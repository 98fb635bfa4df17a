// Package jstools gives tests the Node.js tools pinned in package.json and
// package-lock.json beside this file (the TypeScript compiler, opencode's
// OpenAPI client generator, opencode's official SDK). They are installed with
// `npm ci` on first use, under a file lock, because `go test ./...` runs
// several test binaries at once.
package jstools

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// Dir is the folder holding package.json and, once installed, node_modules.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// Ensure installs the tools if needed and returns Dir.
func Ensure(tb testing.TB) string {
	tb.Helper()
	dir := Dir()
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "sessionid-jstools.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json")); err == nil {
		return dir
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	return dir
}

// Bin is the path of an installed tool's executable.
func Bin(dir, name string) string { return filepath.Join(dir, "node_modules", ".bin", name) }
