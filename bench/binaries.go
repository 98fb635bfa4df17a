package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// opencodeVersion is the stock opencode the bench runs, as the tests do.
const opencodeVersion = "1.18.33"

// binaries are the programs a run starts.
type binaries struct {
	root     string // the repository
	caddy    string // one binary for the module and the plain configurations
	caddyWas string // where it came from, for the report
	native   string
	opencode string
	wrk      string
}

// findBinaries builds what it must into dir: Caddy from ./cmd/caddy unless
// $CADDY_BIN names one, and the native server. opencode is $OPENCODE_BIN or
// the one `go test ./...` and run.sh install under .cache/ (installed here if
// missing, unless opencode is skipped); wrk is installed from Debian's
// packages if missing.
func findBinaries(ctx context.Context, dir string, skip map[string]bool) (*binaries, error) {
	out, err := command(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return nil, fmt.Errorf("run the bench inside the repository (go env GOMOD: %v)", err)
	}
	b := &binaries{root: filepath.Dir(strings.TrimSpace(string(out)))}
	if b.caddy = os.Getenv("CADDY_BIN"); b.caddy != "" {
		if b.caddy, err = filepath.Abs(b.caddy); err != nil {
			return nil, err
		}
		b.caddyWas = "$CADDY_BIN " + b.caddy
	} else if b.caddy, err = b.build(ctx, dir, "caddy"); err != nil {
		return nil, err
	} else {
		b.caddyWas = "built from ./cmd/caddy"
	}
	requests := !skip["get"] || !skip["create"] // the wrk measurements
	if requests && !skip["native"] || !skip["move"] || !skip["journal"] {
		if b.native, err = b.build(ctx, dir, "nativeserver"); err != nil {
			return nil, err
		}
	}
	if requests && !skip["opencode"] {
		if b.opencode, err = b.findOpencode(ctx); err != nil {
			return nil, err
		}
	}
	if requests {
		if b.wrk, err = findWrk(ctx); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// build compiles ./cmd/<name> into dir/bin.
func (b *binaries) build(ctx context.Context, dir, name string) (string, error) {
	bin := filepath.Join(dir, "bin", name)
	cmd := command(ctx, "go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = b.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
	}
	return bin, nil
}

func (b *binaries) findOpencode(ctx context.Context) (string, error) {
	if bin := os.Getenv("OPENCODE_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	prefix := filepath.Join(b.root, ".cache", "opencode-ai-"+opencodeVersion)
	bin := filepath.Join(prefix, "node_modules", ".bin", "opencode")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	logf("installing opencode-ai@%s under %s", opencodeVersion, prefix)
	cmd := command(ctx, "npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, "opencode-ai@"+opencodeVersion)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("npm install opencode-ai@%s: %v\n%s", opencodeVersion, err, out)
	}
	return bin, nil
}

// findWrk returns wrk, installing Debian's package when it is missing and
// this program may (it runs as root).
func findWrk(ctx context.Context) (string, error) {
	if bin, err := exec.LookPath("wrk"); err == nil {
		return bin, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("wrk is missing: install it (apt-get install wrk) or run as root")
	}
	logf("installing wrk (apt-get install -y wrk)")
	install := func() error {
		cmd := command(ctx, "apt-get", "install", "-y", "-qq", "wrk")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install wrk: %v\n%s", err, out)
		}
		return nil
	}
	if err := install(); err != nil {
		// A fresh machine has no package lists yet.
		if out, uerr := command(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get update: %v\n%s", uerr, out)
		}
		if err := install(); err != nil {
			return "", err
		}
	}
	return exec.LookPath("wrk")
}
