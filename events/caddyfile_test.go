package events

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestTheLimitsParseFromTheCaddyfile(t *testing.T) {
	var e Config
	d := caddyfile.NewTestDispenser("events {\n retain_total 64MiB\n max_streams 10\n max_clients 200\n max_clients_per_ip 20\n}")
	d.Next()
	if err := e.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if e.RetainTotal != 64<<20 || e.MaxStreams != 10 || e.MaxClients != 200 || e.MaxClientsPerIP != 20 {
		t.Fatalf("parsed %+v", e)
	}

	var defaults Config
	if err := defaults.Provision(); err != nil {
		t.Fatal(err)
	}
	if defaults.RetainTotal != 256<<20 || defaults.MaxStreams != 100 || defaults.MaxClients != 4096 || defaults.MaxClientsPerIP != 256 {
		t.Fatalf("defaults %+v, want 256MiB, 100, 4096, 256 (docs/events.md)", defaults)
	}

	for _, bad := range []string{"max_streams 0", "max_clients -1", "max_clients_per_ip many", "retain_total 0", "retain_total lots", "max_streams"} {
		var e Config
		d := caddyfile.NewTestDispenser("events {\n" + bad + "\n}")
		d.Next()
		if err := e.UnmarshalCaddyfile(d); err == nil {
			t.Errorf("%q parses; want an error", bad)
		}
	}
}
