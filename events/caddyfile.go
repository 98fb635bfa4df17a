package events

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile parses the handler's events option, the dispenser on
// the option's name:
//
//	events off
//	events {
//		retain_events <count>      # events each stream keeps for resuming clients (10000)
//		retain_bytes  <size>       # and at most this much memory (16MiB)
//		retain_for    <duration>   # and for at most this long (5m)
//		linger        <duration>   # stays subscribed after its last client left (5m)
//		write_timeout <duration>   # drops a client a write blocks on for this long (30s)
//		retain_total  <size>       # memory of the events all streams keep together (256MiB)
//		max_streams   <count>      # streams (upstream subscriptions) at once (100)
//		max_clients   <count>      # client streams at once (1000)
//		max_clients_per_ip <count> # client streams at once from one client IP (100)
//	}
func (e *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		switch d.Val() {
		case "off":
			e.Off = true
		case "on":
			e.Off = false
		default:
			return d.Errf("bad events %q: want off, on or a block", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		switch option {
		case "retain_events", "retain_bytes", "retain_for", "linger", "write_timeout",
			"retain_total", "max_streams", "max_clients", "max_clients_per_ip":
		default:
			return d.Errf("unknown events option %q: want retain_events, retain_bytes, retain_for, linger, write_timeout, "+
				"retain_total, max_streams, max_clients or max_clients_per_ip", option)
		}
		if !d.NextArg() {
			return d.Errf("events %s needs a value", option)
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("events %s takes one value", option)
		}
		switch option {
		case "retain_events", "max_streams", "max_clients", "max_clients_per_ip":
			n, err := strconv.Atoi(value)
			if err != nil || n <= 0 {
				return d.Errf("bad events %s %q: want a positive count", option, value)
			}
			switch option {
			case "retain_events":
				e.RetainEvents = n
			case "max_streams":
				e.MaxStreams = n
			case "max_clients":
				e.MaxClients = n
			case "max_clients_per_ip":
				e.MaxClientsPerIP = n
			}
		case "retain_bytes", "retain_total":
			size, err := humanize.ParseBytes(value)
			if err != nil || size == 0 || size > math.MaxInt64 {
				return d.Errf("bad events %s %q: want a positive size", option, value)
			}
			if option == "retain_bytes" {
				e.RetainBytes = int64(size)
			} else {
				e.RetainTotal = int64(size)
			}
		default:
			dur, err := caddy.ParseDuration(value)
			if err != nil {
				return d.Errf("bad events %s %q: %v", option, value, err)
			}
			if dur <= 0 {
				return d.Errf("bad events %s %q: must be positive", option, value)
			}
			switch option {
			case "retain_for":
				e.RetainFor = caddy.Duration(dur)
			case "linger":
				e.Linger = caddy.Duration(dur)
			case "write_timeout":
				e.WriteTimeout = caddy.Duration(dur)
			}
		}
	}
	return nil
}
