package events

import (
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
		case "retain_events", "retain_bytes", "retain_for", "linger", "write_timeout":
		default:
			return d.Errf("unknown events option %q: want retain_events, retain_bytes, retain_for, linger or write_timeout", option)
		}
		if !d.NextArg() {
			return d.Errf("events %s needs a value", option)
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("events %s takes one value", option)
		}
		switch option {
		case "retain_events":
			n, err := strconv.Atoi(value)
			if err != nil || n <= 0 {
				return d.Errf("bad events retain_events %q: want a positive count", value)
			}
			e.RetainEvents = n
		case "retain_bytes":
			size, err := humanize.ParseBytes(value)
			if err != nil || size == 0 {
				return d.Errf("bad events retain_bytes %q: want a positive size", value)
			}
			e.RetainBytes = int64(size)
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
