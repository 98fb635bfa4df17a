package access

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile parses the handler's auth option, the dispenser on the
// option's name:
//
//	auth verify [<uri>] {
//		verified_for <duration>   # how long a served caller is admitted (30s)
//		refused_for  <duration>   # how long a refused caller is refused (5s)
//		max_callers  <n>          # verdicts remembered (10000)
//	}
//	auth trust [<placeholder>]    # the user an auth handler before this one set ({http.auth.user.id})
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Err("auth needs verify or trust")
	}
	switch d.Val() {
	case "verify":
		c.Trust = ""
		if d.NextArg() {
			c.VerifyURI = d.Val()
		}
	case "trust":
		c.Trust = "{http.auth.user.id}"
		if d.NextArg() {
			c.Trust = d.Val()
		}
	default:
		return d.Errf("bad auth %q: want verify or trust", d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if c.Trust != "" {
			return d.Errf("auth trust takes no options; %q is an option of auth verify", option)
		}
		if !d.NextArg() {
			return d.Errf("auth %s needs a value", option)
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("auth %s takes one value", option)
		}
		switch option {
		case "verified_for", "refused_for":
			dur, err := caddy.ParseDuration(value)
			if err != nil || dur <= 0 {
				return d.Errf("bad auth %s %q: want a positive duration", option, value)
			}
			if option == "verified_for" {
				c.VerifiedFor = caddy.Duration(dur)
			} else {
				c.RefusedFor = caddy.Duration(dur)
			}
		case "max_callers":
			n, err := parsePositive(value)
			if err != nil {
				return d.Errf("bad auth max_callers %q: %v", value, err)
			}
			c.MaxCallers = n
		default:
			return d.Errf("unknown auth option %q: want verified_for, refused_for or max_callers", option)
		}
	}
	return nil
}
