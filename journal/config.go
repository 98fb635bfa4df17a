package journal

import (
	"math"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// Config is the handler's journal option: each session's sync history kept
// in Caddy's storage, at most one completed turn behind, so that it can be
// made again on another worker (docs/fleet.md). Off unless configured.
type Config struct {
	// Off turns the journal off, as leaving the option out does.
	Off bool `json:"off,omitempty"`

	// Limit is the most bytes one session's journal holds. Past it the
	// journal keeps nothing more, and the session is logged as one that
	// cannot be re-homed. Default: 64MiB.
	Limit int64 `json:"limit,omitempty"`

	// Interval bounds the time between two pulls of a worker's new events,
	// besides the pull after each turn. Default: 30s.
	Interval caddy.Duration `json:"interval,omitempty"`

	// RehomeAfter, if set, is how long a worker must have failed its health
	// checks before its sessions are made again on the healthy workers from
	// their journals (each with every completed turn). Default: 0, never on
	// its own (POST /session_ids/rehome does it on demand).
	RehomeAfter caddy.Duration `json:"rehome_after,omitempty"`
}

// Defaults of the journal option.
const (
	DefaultLimit    = 64 << 20
	DefaultInterval = 30 * time.Second
)

// On reports whether the journal is kept.
func (c *Config) On() bool { return c != nil && !c.Off }

// SetDefaults fills what is unset.
func (c *Config) SetDefaults() {
	if c.Limit == 0 {
		c.Limit = DefaultLimit
	}
	if c.Interval == 0 {
		c.Interval = caddy.Duration(DefaultInterval)
	}
}

// UnmarshalCaddyfile parses the handler's journal option, the dispenser on
// the option's name:
//
//	journal [on|off] [{
//		limit        <size>       # the most one session's journal holds (64MiB)
//		interval     <duration>   # the longest between two pulls of a worker (30s)
//		rehome_after <duration>   # re-home a worker down this long (0: only on demand)
//	}]
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		switch d.Val() {
		case "off":
			c.Off = true
		case "on":
			c.Off = false
		default:
			return d.Errf("bad journal %q: want on, off or a block", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if !d.NextArg() {
			return d.Errf("journal %s needs a value", option)
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("journal %s takes one value", option)
		}
		switch option {
		case "limit":
			size, err := humanize.ParseBytes(value)
			if err != nil || size == 0 || size > math.MaxInt64 {
				return d.Errf("bad journal limit %q: want a positive size", value)
			}
			c.Limit = int64(size)
		case "interval":
			interval, err := caddy.ParseDuration(value)
			if err != nil || interval <= 0 {
				return d.Errf("bad journal interval %q: want a positive duration", value)
			}
			c.Interval = caddy.Duration(interval)
		case "rehome_after":
			after, err := caddy.ParseDuration(value)
			if err != nil || after < 0 {
				return d.Errf("bad journal rehome_after %q: want a duration (0: off)", value)
			}
			c.RehomeAfter = caddy.Duration(after)
		default:
			return d.Errf("unknown journal option %q: want limit, interval or rehome_after", option)
		}
	}
	return nil
}
