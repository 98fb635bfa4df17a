package upstream

import (
	"context"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// RouteVar is the request variable that carries a request's Route from the
// session_ids handler to lb_policy session_ids and back.
const RouteVar = "session_ids.route"

// Route is one request's routing. The handler attaches it before the request
// reaches reverse_proxy; the policy reads Worker and reports its selection
// on every Select (reverse_proxy may select several times while it retries).
type Route struct {
	// Worker is the upstream that must serve the request (its dial address);
	// empty lets the policy's fallback choose.
	Worker string
	// Session names the session Worker was chosen for, for error messages.
	Session string
	// Done, when set, is called by Finish once a request of this route has
	// gone through next: the handler learns the pool from it.
	Done func(r *http.Request, rt *Route)
	// Avoid, when set, names the workers the policy's fallback must not
	// choose while others are available: workers being drained.
	Avoid func(worker string) bool

	mu sync.Mutex
	// leave ends the request's count as a change under way of its session
	// (internal/moving), when it was counted.
	leave func()
	// seen: the policy ran, so Worker was honoured.
	seen bool
	// chosen is the worker the policy selected last.
	chosen string
	// pool is the pool the policy selected from.
	pool *Pool
}

// SetLeave sets what Leave runs, running the one set before, if any.
func (rt *Route) SetLeave(leave func()) {
	rt.mu.Lock()
	old := rt.leave
	rt.leave = leave
	rt.mu.Unlock()
	if old != nil {
		old()
	}
}

// Leave runs once the client's request is done: it is no longer a change
// under way of its session.
func (rt *Route) Leave() {
	rt.mu.Lock()
	leave := rt.leave
	rt.leave = nil
	rt.mu.Unlock()
	if leave != nil {
		leave()
	}
}

// Report records a selection of the policy: the pool it chose from and the
// upstream it chose (nil when it chose none).
func (rt *Route) Report(pool *Pool, chosen *reverseproxy.Upstream) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.seen, rt.pool = true, pool
	if chosen != nil {
		rt.chosen = chosen.Dial
	}
}

// Outcome is what the policy reported: whether it ran, and the worker it
// chose.
func (rt *Route) Outcome() (seen bool, chosen string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.seen, rt.chosen
}

// Pool is the pool the policy selected from, or nil before it ran.
func (rt *Route) Pool() *Pool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.pool
}

// Finish calls Done for a request of this route that went through next. It
// is safe on a nil route.
func (rt *Route) Finish(r *http.Request) {
	if rt != nil && rt.Done != nil {
		rt.Done(r, rt)
	}
}

// RouteOf returns the route attached to r, or nil for a request that did
// not pass through the handler.
func RouteOf(r *http.Request) *Route {
	rt, _ := caddyhttp.GetVar(r.Context(), RouteVar).(*Route)
	return rt
}

// Attach gives a client's request a route in its own variables; the handler
// sets Worker once it knows the session.
func Attach(r *http.Request, done func(*http.Request, *Route)) *Route {
	rt := &Route{Done: done}
	caddyhttp.SetVar(r.Context(), RouteVar, rt)
	return rt
}

// Worker is the worker r's route points at, or "".
func Worker(r *http.Request) string {
	if rt := RouteOf(r); rt != nil {
		return rt.Worker
	}
	return ""
}

// WithRoute returns r with a route of its own: a shallow copy of the request
// variables in a new context, so that concurrent requests of the module's
// own (one per worker, say) never share a route or write to one map. The
// new route keeps the Done and Session of r's route; its worker is worker,
// or r's route's when worker is empty and inherit is true.
func WithRoute(r *http.Request, worker string, inherit bool) (*http.Request, *Route) {
	rt := &Route{Worker: worker}
	if parent := RouteOf(r); parent != nil {
		rt.Done, rt.Session, rt.Avoid = parent.Done, parent.Session, parent.Avoid
		if inherit && worker == "" {
			rt.Worker = parent.Worker
		}
	}
	vars := map[string]any{}
	if parent, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		for k, v := range parent {
			vars[k] = v
		}
	}
	vars[RouteVar] = rt
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars)
	return r.WithContext(ctx), rt
}
