package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// upstream is one server under test and the Caddy configurations in front of
// it, each reached at its own base URL.
type upstream struct {
	name   string
	addr   string                  // host:port; for a fleet, every worker's, space-separated (Caddy's UPSTREAM)
	fleet  bool                    // several workers: there is no one upstream to measure directly
	base   map[string]string       // via -> base URL (viaUpstream is the server itself)
	caddys map[string]*caddyServer // via -> Caddy, for the proxied ones
	vias   []string                // in the order measurements alternate
	proc   *process                // the server's process, when it is one this program started
}

// withCaddys starts one Caddy per configuration in front of u.
func (m *Main) withCaddys(ctx context.Context, u *upstream, vias ...string) error {
	u.base = map[string]string{}
	u.caddys = map[string]*caddyServer{}
	u.vias = nil
	if !u.fleet {
		u.base[viaUpstream] = "http://" + u.addr
		u.vias = append(u.vias, viaUpstream)
	}
	for _, via := range vias {
		c, err := m.startCaddy(ctx, caddyName(u.name, via), via, u.addr)
		if err != nil {
			return err
		}
		u.base[via], u.caddys[via] = c.URL, c
		u.vias = append(u.vias, via)
	}
	return nil
}

// caddyName names the Caddy of a configuration in front of an upstream.
func caddyName(upstream, via string) string { return upstream + "-" + shortName(via) }

// admin is the admin endpoint of the Caddy of a configuration; "" for the
// upstream itself.
func (u *upstream) admin(via string) string {
	if c, ok := u.caddys[via]; ok {
		return c.Admin
	}
	return ""
}

// shortName names a configuration in file names and progress lines.
func shortName(via string) string {
	switch via {
	case viaPlain:
		return "plain"
	case viaMapping:
		return "mapping"
	case viaDirect:
		return "direct"
	case viaEventsOff:
		return "events-off"
	case viaJournal:
		return "journal"
	}
	return strings.ReplaceAll(via, " ", "-")
}

// startNative starts the reference native server with a fresh data folder.
func (m *Main) startNative(ctx context.Context) (*upstream, error) {
	return m.startNativeNamed(ctx, "native")
}

// startNativeNamed starts a native server whose data folder and log are
// called name.
func (m *Main) startNativeNamed(ctx context.Context, name string) (*upstream, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(m.dir, name)
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := m.start(name, data, nil, m.bin.native, "-addr", addr, "-data", data)
	if err != nil {
		return nil, err
	}
	if err := waitHealthy(ctx, "http://"+addr+"/global/health", p, 30*time.Second); err != nil {
		return nil, err
	}
	return &upstream{name: name, addr: addr, proc: p}, nil
}

// startOpencode starts a stock `opencode serve`, isolated: its own HOME and
// XDG folders, a fresh git repository as its working directory. It has no
// model configured; nothing here prompts.
func (m *Main) startOpencode(ctx context.Context) (*upstream, error) {
	root := filepath.Join(m.dir, "opencode")
	dirs := map[string]string{}
	for _, d := range []string{"home", "data", "config", "state", "cache", "work"} {
		dirs[d] = filepath.Join(root, d)
		if err := os.MkdirAll(dirs[d], 0o755); err != nil {
			return nil, err
		}
	}
	git := command(ctx, "sh", "-c", "git init -q . && git -c user.email=b@b -c user.name=b commit -q --allow-empty -m init")
	git.Dir = dirs["work"]
	if out, err := git.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("git init: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env := []string{
		"HOME=" + dirs["home"], "XDG_DATA_HOME=" + dirs["data"], "XDG_CONFIG_HOME=" + dirs["config"],
		"XDG_STATE_HOME=" + dirs["state"], "XDG_CACHE_HOME=" + dirs["cache"],
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := m.start("opencode", dirs["work"], env, m.bin.opencode,
		"serve", "--hostname", "127.0.0.1", "--port", fmt.Sprint(port), "--print-logs")
	if err != nil {
		return nil, err
	}
	if err := waitHealthy(ctx, "http://"+addr+"/global/health", p, 90*time.Second); err != nil {
		return nil, err
	}
	return &upstream{name: "opencode", addr: addr}, nil
}
