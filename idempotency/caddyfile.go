package idempotency

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile parses the handler's idempotency option, the
// dispenser on the option's name:
//
//	idempotency off
//	idempotency {
//		ttl     <duration>   # how long answers are kept for replay (24h)
//		wait    <duration>   # how long a retry waits for the first request (10s)
//		confirm <duration>   # prompt_async answers once its message is visible (off)
//	}
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		switch d.Val() {
		case "off":
			c.Off = true
		case "on":
			c.Off = false
		default:
			return d.Errf("bad idempotency %q: want off, on or a block", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if option != "ttl" && option != "wait" && option != "confirm" {
			return d.Errf("unknown idempotency option %q: want ttl, wait or confirm", option)
		}
		if !d.NextArg() {
			return d.Errf("idempotency %s needs a duration", option)
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("idempotency %s takes one value", option)
		}
		dur, err := caddy.ParseDuration(value)
		if err != nil {
			return d.Errf("bad idempotency %s %q: %v", option, value, err)
		}
		if dur < 0 {
			return d.Errf("bad idempotency %s %q: must not be negative", option, value)
		}
		switch option {
		case "ttl":
			if dur == 0 {
				return d.Errf("bad idempotency ttl %q: records must be kept for some time (use idempotency off to turn keys off)", value)
			}
			c.TTL = caddy.Duration(dur)
		case "wait":
			c.Wait = caddy.Duration(dur)
		case "confirm":
			c.Confirm = caddy.Duration(dur)
		}
	}
	return nil
}
