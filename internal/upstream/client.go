package upstream

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Client asks workers on the module's own behalf, outside any client's
// request: a background job, an admin call. It goes through the
// reverse_proxy of the handler it belongs to, like Ask, so it gets the same
// selection, health state, retries, timeouts and header_up (which is where
// the module's own upstream credentials come from), but it carries none of a
// client's headers.
//
// A handler learns its next only when it serves a request, so a Client can
// ask once the handler has served one (Learn); before that Ask fails with
// ErrNotReady. The policy routes by Route.Worker and can only select a
// member of the pool; a worker that has left the pool is out of reach.
type Client struct {
	mu   sync.Mutex
	next caddyhttp.Handler
	base *http.Request // Caddy's request context (vars, replacer, server), no client headers
}

// ErrNotReady: the handler has served no request yet, so there is no
// reverse_proxy to ask through.
var ErrNotReady = errors.New("no request has reached the handler yet, so its reverse_proxy is not known")

// Learn keeps next and the Caddy context of the first request the handler
// serves; a config's next never changes (a reload makes a new handler).
func (c *Client) Learn(r *http.Request, next caddyhttp.Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil {
		return
	}
	base := r.Clone(context.WithoutCancel(r.Context()))
	base.Header = http.Header{}
	base.Body, base.ContentLength, base.GetBody = http.NoBody, 0, nil
	base.URL.RawQuery, base.URL.Fragment = "", ""
	c.next, c.base = next, base
}

// Ready reports whether Ask can go out.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next != nil
}

// Ask sends one request to a worker ("" for the one the policy's fallback
// chooses) and captures its answer, within ctx.
func (c *Client) Ask(ctx context.Context, worker, method, path, rawQuery string, body []byte) (*Answer, error) {
	c.mu.Lock()
	next, base := c.next, c.base
	c.mu.Unlock()
	if next == nil {
		return nil, ErrNotReady
	}
	// Caddy's values from base, the cancellation (and deadline) of ctx.
	merged, cancel := context.WithCancel(base.Context())
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	sub, _ := WithRoute(base.WithContext(merged), worker, false)
	return do(sub, next, method, path, rawQuery, body)
}
