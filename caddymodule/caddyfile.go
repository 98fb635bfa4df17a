package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/journal"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("session_ids", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("session_ids", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	session_ids [<matcher>] {
//		mode            mapping|direct
//		namespace       <name>
//		duplicates      match|return|reject
//		max_body_size   <size>
//		max_buffer_size <size>
//		cache_entries   <count>
//		cache_ttl       <duration>
//		negative_ttl    <duration>
//		create_missing  [true|false]
//		max_ids_per_body <count>
//		upstream_authorization <header value>
//		auth            verify [<uri>] {
//			verified_for <duration>
//			refused_for  <duration>
//			max_callers  <count>
//		} | trust [<placeholder>]
//		idempotency     off | {
//			ttl     <duration>
//			wait    <duration>
//			confirm <duration>
//		}
//		journal         [on|off] [{
//			limit    <size>
//			interval <duration>
//		}]
//		events          off | {
//			retain_events <count>
//			retain_bytes  <size>
//			retain_for    <duration>
//			linger        <duration>
//			write_timeout <duration>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		if option == "create_missing" {
			h.CreateMissing = true
			if d.NextArg() {
				v, err := strconv.ParseBool(d.Val())
				if err != nil {
					return d.Errf("bad create_missing %q: want true or false", d.Val())
				}
				h.CreateMissing = v
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			continue
		}
		if option == "idempotency" {
			if h.Idempotency == nil {
				h.Idempotency = new(idempotency.Config)
			}
			if err := h.Idempotency.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		}
		if option == "auth" {
			if h.Auth == nil {
				h.Auth = new(access.Config)
			}
			if err := h.Auth.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		}
		if option == "journal" {
			if h.Journal == nil {
				h.Journal = new(journal.Config)
			}
			if err := h.Journal.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		}
		if option == "events" {
			if h.Events == nil {
				h.Events = new(events.Config)
			}
			if err := h.Events.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		value := d.Val()
		if d.NextArg() {
			return d.Errf("%s takes one value", option)
		}
		switch option {
		case "mode":
			h.Mode = value
		case "namespace":
			h.Namespace = value
		case "upstream_authorization":
			h.UpstreamAuthorization = value
		case "duplicates":
			h.Duplicates = value
		case "max_body_size", "max_buffer_size":
			size, err := humanize.ParseBytes(value)
			if err != nil {
				return d.Errf("bad %s %q: %v", option, value, err)
			}
			if option == "max_body_size" {
				h.MaxBodySize = int64(size)
			} else {
				h.MaxBufferSize = int64(size)
			}
		case "max_ids_per_body":
			n, err := strconv.Atoi(value)
			if err != nil || n <= 0 {
				return d.Errf("bad max_ids_per_body %q: want a positive count", value)
			}
			h.MaxIDsPerBody = n
		case "cache_entries":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("bad cache_entries %q: want a positive count", value)
			}
			h.CacheEntries = n
		case "negative_ttl", "cache_ttl":
			ttl, err := caddy.ParseDuration(value)
			if err != nil {
				return d.Errf("bad %s %q: %v", option, value, err)
			}
			if option == "cache_ttl" {
				h.CacheTTL = caddy.Duration(ttl)
			} else {
				h.NegativeTTL = caddy.Duration(ttl)
			}
		default:
			return d.Errf("unknown session_ids option %q", option)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
