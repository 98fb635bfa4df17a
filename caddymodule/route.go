package caddymodule

import (
	"context"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// routeVar is the request variable through which the handler tells the
// selection policy (lb_policy session_ids) where a request must go, and the
// policy tells the handler where it went and which workers it chose from.
const routeVar = "session_ids.route"

// route is one request's routing. The handler creates it before the request
// reaches reverse_proxy; the policy reads worker and fills in the rest on
// every selection (reverse_proxy may select several times while it retries).
type route struct {
	// worker is the upstream that must serve the request (its dial address);
	// empty lets the policy's fallback choose.
	worker string
	// session names the session the worker was chosen for, for error messages.
	session string
	// handler learns the pool from the route once the request is done.
	handler *Handler

	mu sync.Mutex
	// seen: the policy ran, so worker was honoured.
	seen bool
	// chosen is the worker the policy selected last.
	chosen string
	// pool is the upstream pool the policy selected from.
	pool []*reverseproxy.Upstream
}

func (rt *route) report(pool []*reverseproxy.Upstream, chosen *reverseproxy.Upstream) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.seen, rt.pool = true, pool
	if chosen != nil {
		rt.chosen = chosen.Dial
	}
}

// outcome is what the policy reported: whether it ran, and the worker it chose.
func (rt *route) outcome() (seen bool, chosen string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.seen, rt.chosen
}

// routeOf returns the route the handler attached to r, or nil for a request
// that did not pass through the handler.
func routeOf(r *http.Request) *route {
	rt, _ := caddyhttp.GetVar(r.Context(), routeVar).(*route)
	return rt
}

// withRoute returns r with a route of its own: a shallow copy of the request
// variables in a new context, so that concurrent requests of the handler's
// own (one per worker, say) never share a route or write to one map.
// The route's worker is inherited from r's route when worker is empty and
// inherit is true; the session it is about always is.
func withRoute(r *http.Request, worker string, inherit bool) (*http.Request, *route) {
	rt := &route{worker: worker}
	if parent := routeOf(r); parent != nil {
		rt.handler, rt.session = parent.handler, parent.session
		if inherit && worker == "" {
			rt.worker = parent.worker
		}
	}
	vars := map[string]any{}
	if parent, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		for k, v := range parent {
			vars[k] = v
		}
	}
	vars[routeVar] = rt
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars)
	return r.WithContext(ctx), rt
}

// attachRoute gives a client's request its route in its own variables; the
// handler sets the worker once it knows the session.
func (h *Handler) attachRoute(r *http.Request) *route {
	rt := &route{handler: h}
	caddyhttp.SetVar(r.Context(), routeVar, rt)
	return rt
}

// done tells the handler what the policy reported for a finished request.
func (rt *route) done(r *http.Request) {
	if rt != nil && rt.handler != nil {
		rt.handler.observe(r, rt)
	}
}
