package fleet

import (
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Fleet is one handler's view of its workers: the upstream pool that
// lb_policy session_ids reported last. With the policy in place every
// request refreshes it, so it follows reloads and dynamic upstreams; without
// it the fleet watches which upstreams answer, and a second one means
// requests are being misrouted.
type Fleet struct {
	namespace string
	index     *idmap.Index
	logger    *zap.Logger

	pool atomic.Pointer[upstream.Pool]

	// noPolicy: a request went through reverse_proxy without the policy
	// selecting, so there is no pool to learn.
	noPolicy atomic.Bool

	mu            sync.Mutex
	withoutPolicy map[string]struct{} // upstreams that answered with no policy in place
	misconfigured atomic.Bool
	discovery     singleflight.Group
	moves         *moving.Namespace // the namespace's moves, across reloads
}

// New returns the fleet of a handler's namespace.
func New(namespace string, index *idmap.Index, logger *zap.Logger) *Fleet {
	return &Fleet{namespace: namespace, index: index, logger: logger, moves: moving.Of(namespace)}
}

// ErrMisrouting is the answer of a handler that found several upstreams
// behind a reverse_proxy without the session-aware policy.
const ErrMisrouting = "reverse_proxy balances several upstreams without lb_policy session_ids, so requests for a session would reach workers that do not hold it; add `lb_policy session_ids` to the reverse_proxy"

// Misconfigured reports whether requests are being balanced over several
// upstreams without the policy; the handler then refuses every request.
func (f *Fleet) Misconfigured() bool { return f.misconfigured.Load() }

// Pool is the last reported pool, or nil before the policy has run.
func (f *Fleet) Pool() *upstream.Pool { return f.pool.Load() }

// Inherit takes the pool of the fleet of the config this one replaces,
// until a request through this one reports its own: the admin API (moves,
// drains) needs it before any request.
func (f *Fleet) Inherit(previous *Fleet) {
	if pool := previous.Pool(); pool != nil {
		f.pool.CompareAndSwap(nil, pool)
	}
}

// Workers returns the last reported pool's workers.
func (f *Fleet) Workers() []*reverseproxy.Upstream { return f.Pool().Upstreams() }

// Several reports whether the pool has more than one worker, which is when
// sessions need routing at all.
func (f *Fleet) Several() bool { return f.Pool().Len() > 1 }

// Member returns the upstream of a worker in the last reported pool.
func (f *Fleet) Member(worker string) (*reverseproxy.Upstream, bool) { return f.Pool().Member(worker) }

// Observe learns from a request that went through reverse_proxy: it is the
// Done of every route the handler attaches.
func (f *Fleet) Observe(r *http.Request, rt *upstream.Route) {
	if seen, _ := rt.Outcome(); seen {
		if pool := rt.Pool(); f.pool.Load() != pool {
			f.pool.Store(pool)
		}
		return
	}
	f.noPolicy.Store(true)
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil || rt.Session == "" {
		// Only requests about a session count: a config may rightly send
		// other paths to other reverse_proxies.
		return
	}
	answered, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	if answered == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.withoutPolicy == nil {
		f.withoutPolicy = map[string]struct{}{}
	}
	f.withoutPolicy[answered] = struct{}{}
	if len(f.withoutPolicy) > 1 && !f.misconfigured.Swap(true) {
		seen := make([]string, 0, len(f.withoutPolicy))
		for u := range f.withoutPolicy {
			seen = append(seen, u)
		}
		f.logger.Error("misconfiguration: session_ids refuses every request from now on", zap.String("problem", ErrMisrouting), zap.Strings("upstreams", seen))
	}
}

// Learn makes sure the pool is known before the handler needs all of it.
// The policy reports the pool only when it selects, so before the first
// request has gone through reverse_proxy one cheap request (a HEAD, whose
// answer does not matter) is sent through it. Without the policy there is
// nothing to learn.
func (f *Fleet) Learn(r *http.Request, next caddyhttp.Handler) {
	if f.pool.Load() != nil || f.noPolicy.Load() {
		return
	}
	_, _, _ = upstream.AskWorker(r, next, "", http.MethodHead, "/global/health", "", nil)
}
