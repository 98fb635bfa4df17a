// Package lbpolicy is lb_policy session_ids, the reverse_proxy selection
// policy that sends every request naming a session to the worker holding it.
//
// It owns the selection and nothing else: which worker holds a session is
// the handler's knowledge (package caddymodule), handed over in the request's
// upstream.Route, and the policy reports back the pool it selected from and
// its choice. It imports only the contract package internal/upstream and
// must not touch mappings, storage or the handler.
package lbpolicy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

func init() {
	caddy.RegisterModule(SessionSelection{})
}

// SessionSelection is the load-balancing policy that sends every request
// naming a session to the worker holding that session, so that one
// reverse_proxy can front many `opencode serve` workers:
//
//	reverse_proxy w1:4096 w2:4096 w3:4096 {
//		lb_policy session_ids {
//			fallback least_conn
//		}
//	}
//
// The session_ids handler, placed before reverse_proxy, finds the worker of
// the session a request names (recorded when the session was created through
// it, or found by asking the workers once) and hands it to this policy in a
// request variable. The policy selects that worker and no other: when it is
// unavailable (down, restarting, failing its health checks) the policy
// selects nothing, so reverse_proxy waits and retries for its lb_try_duration
// and then fails with 503, which the handler answers in opencode's error
// shape naming the worker. A request that names no session, and every create
// of a new session, goes to the worker the fallback policy chooses, and the
// handler records that choice. Without the session_ids handler in front, the
// policy is its fallback.
type SessionSelection struct {
	// FallbackRaw is the policy that places new sessions and routes requests
	// that name none: any of reverse_proxy's selection policies (random,
	// least_conn, round_robin, query <key> to keep a directory on one worker,
	// header, cookie, …). Default: random.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	fallback reverseproxy.Selector
	pool     *atomic.Pointer[upstream.Pool] // the index of the pool seen last
}

// CaddyModule returns the Caddy module information.
func (SessionSelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.session_ids",
		New: func() caddy.Module { return new(SessionSelection) },
	}
}

// Provision loads the fallback policy.
func (s *SessionSelection) Provision(ctx caddy.Context) error {
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %w", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	s.pool = new(atomic.Pointer[upstream.Pool])
	return nil
}

// Select returns the worker of the request's session when the handler named
// one, nil while that worker is unavailable or absent from the pool, and the
// fallback's choice otherwise. Every selection is reported on the route.
func (s *SessionSelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	rt := upstream.RouteOf(r)
	if rt == nil {
		return s.fallback.Select(pool, r, w)
	}
	indexed := s.index(pool)
	if rt.Worker == "" {
		chosen := s.fallback.Select(placeable(pool, rt.Avoid), r, w)
		rt.Report(indexed, chosen)
		return chosen
	}
	u, ok := indexed.Member(rt.Worker)
	if !ok || !u.Available() {
		rt.Report(indexed, nil)
		return nil
	}
	rt.Report(indexed, u)
	return u
}

// placeable is the pool without the workers the route avoids (those being
// drained), unless that leaves no available worker: new sessions then go to
// a draining worker rather than nowhere.
func placeable(pool reverseproxy.UpstreamPool, avoid func(string) bool) reverseproxy.UpstreamPool {
	if avoid == nil {
		return pool
	}
	kept := make(reverseproxy.UpstreamPool, 0, len(pool))
	available := false
	for _, u := range pool {
		if !avoid(u.Dial) {
			kept = append(kept, u)
			available = available || u.Available()
		}
	}
	if len(kept) == len(pool) || !available {
		return pool
	}
	return kept
}

// index returns the index of pool: the one built for it before, or a new
// one for a new pool (the config's static upstreams once, or each new
// answer of a dynamic upstream source).
func (s *SessionSelection) index(pool reverseproxy.UpstreamPool) *upstream.Pool {
	if p := s.pool.Load(); p.Indexes(pool) {
		return p
	}
	p := upstream.NewPool(pool)
	s.pool.Store(p)
	return p
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy session_ids {
//		fallback <policy> [<policy options>...]
//	}
func (s *SessionSelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the policy's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "fallback":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if s.FallbackRaw != nil {
				return d.Err("fallback selection policy already specified")
			}
			name := d.Val()
			if name == "session_ids" {
				return d.Err("session_ids cannot be its own fallback")
			}
			modID := "http.reverse_proxy.selection_policies." + name
			unm, err := caddyfile.UnmarshalModule(d, modID)
			if err != nil {
				return err
			}
			sel, ok := unm.(reverseproxy.Selector)
			if !ok {
				return d.Errf("module %s (%T) is not a reverseproxy.Selector", modID, unm)
			}
			s.FallbackRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
		default:
			return d.Errf("unrecognized lb_policy session_ids option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SessionSelection)(nil)
	_ reverseproxy.Selector = (*SessionSelection)(nil)
	_ caddyfile.Unmarshaler = (*SessionSelection)(nil)
)
