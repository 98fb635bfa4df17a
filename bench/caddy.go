package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/certmagic"
)

// The ways a request reaches an upstream. Each Caddy configuration is the
// same binary; the module ones serve Caddyfile.example, the plain one
// bench/Caddyfile.plain (the same reverse_proxy without session_ids).
const (
	viaUpstream = "upstream"            // no proxy
	viaPlain    = "plain reverse_proxy" // the baseline
	viaMapping  = "session_ids mapping" // the module, mapping mode
	viaDirect   = "session_ids direct"  // the module, direct mode
	// viaEventsOff is mapping mode with resumable event streams off: each
	// client's stream rewritten as it flows, the module before them.
	viaEventsOff = "session_ids mapping, events off"
	// viaJournal is mapping mode with the journal on (docs/fleet.md), new
	// sessions on the first worker.
	viaJournal = "session_ids mapping, journal on"
)

// caddyReady bounds the wait for a Caddy configuration to reach its upstream
// (opencode takes about 3 s to start; Caddy holds requests until it is up).
const caddyReady = 60 * time.Second

// caddyServer is one running Caddy configuration in front of one upstream.
type caddyServer struct {
	*process
	URL   string
	Admin string // its admin endpoint, which serves /debug/pprof/
	Data  string // its XDG_DATA_HOME; file storage under Data/caddy
}

// storage is the Caddy's file storage, where the module keeps its mappings.
func (c *caddyServer) storage() *certmagic.FileStorage {
	return &certmagic.FileStorage{Path: filepath.Join(c.Data, "caddy")}
}

// caddyData is the XDG_DATA_HOME of the Caddy called name, so that storage
// can be seeded before it starts; its file storage is the folder caddy in it.
func (m *Main) caddyData(name string) string { return filepath.Join(m.dir, "caddy", name, "data") }

// startCaddy starts the Caddy binary with one configuration (via: viaPlain,
// viaMapping or viaDirect) in front of upstream (host:port), with its data in
// m.caddyData(name). It waits until a health check through the proxy reaches
// the upstream.
func (m *Main) startCaddy(ctx context.Context, name, via, upstream string) (*caddyServer, error) {
	home, data := filepath.Join(m.dir, "caddy", name), m.caddyData(name)
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	config := filepath.Join(m.bin.root, "Caddyfile.example")
	env := []string{
		fmt.Sprintf("LISTEN=:%d", port), "BIND=127.0.0.1", "UPSTREAM=" + upstream,
		fmt.Sprintf("ADMIN=127.0.0.1:%d", admin),
		"XDG_DATA_HOME=" + data, "XDG_CONFIG_HOME=" + filepath.Join(home, "config"), "HOME=" + home,
		// A stream's subscription ends a second after its reader, so that it
		// does not run on into the next measurement.
		"EVENTS_LINGER=1s",
	}
	switch via {
	case viaPlain:
		config = filepath.Join(m.bin.root, "bench", "Caddyfile.plain")
	case viaMapping:
		env = append(env, "MODE=mapping")
	case viaEventsOff:
		env = append(env, "MODE=mapping", "EVENTS=off")
	case viaDirect:
		env = append(env, "MODE=direct")
	case viaJournal:
		env = append(env, "MODE=mapping", "JOURNAL=on", "PLACEMENT=first")
	default:
		return nil, fmt.Errorf("unknown configuration %q", via)
	}
	p, err := m.start("caddy-"+name, home, env, m.bin.caddy, "run", "--config", config, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	c := &caddyServer{process: p, URL: fmt.Sprintf("http://127.0.0.1:%d", port), Admin: fmt.Sprintf("http://127.0.0.1:%d", admin), Data: data}
	if err := waitHealthy(ctx, c.URL+"/global/health", p, caddyReady); err != nil {
		return nil, err
	}
	return c, nil
}
