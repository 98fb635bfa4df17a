package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// fleet is what the handler knows of the workers behind reverse_proxy: the
// upstream pool that lb_policy session_ids reported last. With the policy in
// place every request refreshes it, so it follows reloads and dynamic
// upstreams; without it the handler watches which upstreams answer, and a
// second one means requests are being misrouted.
type fleet struct {
	pool atomic.Pointer[knownPool]

	// noPolicy: a request went through reverse_proxy without the policy
	// selecting, so there is no pool to learn.
	noPolicy atomic.Bool

	mu             sync.Mutex
	withoutPolicy  map[string]struct{} // upstreams that answered with no policy in place
	misconfigured  atomic.Bool
	discovery      singleflight.Group
	unplacedLogged atomic.Bool
}

// errMisrouting is the answer of a handler that found several upstreams
// behind a reverse_proxy without the session-aware policy.
const errMisrouting = "reverse_proxy balances several upstreams without lb_policy session_ids, so requests for a session would reach workers that do not hold it; add `lb_policy session_ids` to the reverse_proxy"

// knownPool is a pool the policy reported, indexed by dial address.
type knownPool struct {
	upstreams []*reverseproxy.Upstream
	byDial    map[string]*reverseproxy.Upstream
}

func newKnownPool(pool []*reverseproxy.Upstream) *knownPool {
	k := &knownPool{upstreams: pool, byDial: make(map[string]*reverseproxy.Upstream, len(pool))}
	for _, u := range pool {
		k.byDial[u.Dial] = u
	}
	return k
}

// workers returns the last reported pool, or nil before the policy has run.
func (f *fleet) workers() []*reverseproxy.Upstream {
	if p := f.pool.Load(); p != nil {
		return p.upstreams
	}
	return nil
}

// several reports whether the pool has more than one worker, which is when
// sessions need routing at all.
func (f *fleet) several() bool { return len(f.workers()) > 1 }

// member returns the upstream of a worker in the last reported pool.
func (f *fleet) member(worker string) (*reverseproxy.Upstream, bool) {
	p := f.pool.Load()
	if p == nil {
		return nil, false
	}
	u, ok := p.byDial[worker]
	return u, ok
}

// observe learns from a request that went through reverse_proxy.
func (h *Handler) observe(r *http.Request, rt *route) {
	seen, _ := rt.outcome()
	if seen {
		rt.mu.Lock()
		pool := rt.pool
		rt.mu.Unlock()
		if old := h.fleet.pool.Load(); old == nil || !samePool(old.upstreams, pool) {
			h.fleet.pool.Store(newKnownPool(pool))
		}
		return
	}
	h.fleet.noPolicy.Store(true)
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil || rt.session == "" {
		// Only requests about a session count: a config may rightly send
		// other paths to other reverse_proxies.
		return
	}
	upstream, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	if upstream == "" {
		return
	}
	h.fleet.mu.Lock()
	defer h.fleet.mu.Unlock()
	if h.fleet.withoutPolicy == nil {
		h.fleet.withoutPolicy = map[string]struct{}{}
	}
	h.fleet.withoutPolicy[upstream] = struct{}{}
	if len(h.fleet.withoutPolicy) > 1 && !h.fleet.misconfigured.Swap(true) {
		seen := make([]string, 0, len(h.fleet.withoutPolicy))
		for u := range h.fleet.withoutPolicy {
			seen = append(seen, u)
		}
		h.logger.Error("misconfiguration: session_ids refuses every request from now on", zap.String("problem", errMisrouting), zap.Strings("upstreams", seen))
	}
}

// samePool reports whether two reported pools are one: static upstreams are
// the same slice on every request, so this costs the same for any size.
func samePool(a, b []*reverseproxy.Upstream) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// learnPool makes sure the pool is known before the handler needs all of
// it, by sending one cheap request (a HEAD, whose answer does not matter)
// through the policy. Without the policy there is nothing to learn.
func (h *Handler) learnPool(r *http.Request, next caddyhttp.Handler) {
	if h.fleet.pool.Load() != nil || h.fleet.noPolicy.Load() {
		return
	}
	_, _, _ = askWorker(r, next, "", http.MethodHead, "/global/health", "", nil)
}

// errWorkerUnknown: the session may be on a worker that cannot be asked.
type errWorkerUnknown struct {
	session string
	down    []string
}

func (e errWorkerUnknown) Error() string {
	return fmt.Sprintf("the worker of session %s is not recorded, and workers that could hold it are unavailable: %v", e.session, e.down)
}

// workerOf returns the worker that holds the session the client calls id,
// or "" when the session is not known anywhere (the fallback then chooses,
// and the worker it reaches answers 404 as a lone opencode would).
func (h *Handler) workerOf(r *http.Request, next caddyhttp.Handler, id string) (string, error) {
	ctx := r.Context()
	realID, worker, mapped, err := h.index.Route(ctx, id)
	if err != nil {
		return "", err
	}
	if mapped && worker != "" {
		return worker, nil
	}
	if !mapped {
		realID = id
	}
	if h.learnPool(r, next); !h.fleet.several() {
		return "", nil
	}
	if worker, known, err := h.index.WorkerOf(ctx, realID); err != nil || known {
		return worker, err
	}
	if h.index.Unplaced(realID) {
		return "", nil
	}
	found, err, _ := h.fleet.discovery.Do(realID, func() (any, error) {
		// Shared by every request waiting for this id: one client giving up
		// must not fail the others.
		return h.discover(r.WithContext(context.WithoutCancel(r.Context())), next, realID)
	})
	if err != nil {
		return "", err
	}
	return found.(string), nil
}

// discover asks every worker for a session whose worker is not recorded, and
// records the one that has it. Sessions the handler did not create (made
// without an id, forked, made by opencode itself as children, or made on a
// worker directly) and mappings written before workers were recorded are
// found this way once.
func (h *Handler) discover(r *http.Request, next caddyhttp.Handler, realID string) (string, error) {
	answers := askEach(r, next, h.fleet.workers(), http.MethodGet, "/session/"+url.PathEscape(realID), "")
	var down []string
	for _, a := range answers {
		switch {
		case a.err == nil && a.answer.ok():
			if err := h.index.SaveWorker(r.Context(), realID, a.worker); err != nil {
				return "", err
			}
			h.logger.Info("found the worker of a session", zap.String("real_id", realID), zap.String("worker", a.worker))
			sessionMetrics.discoveries.WithLabelValues(h.Namespace, "found").Inc()
			return a.worker, nil
		case a.err != nil || a.answer.status != http.StatusNotFound:
			down = append(down, a.worker)
		}
	}
	if len(down) > 0 {
		sessionMetrics.discoveries.WithLabelValues(h.Namespace, "unknown").Inc()
		return "", errWorkerUnknown{session: realID, down: down}
	}
	sessionMetrics.discoveries.WithLabelValues(h.Namespace, "absent").Inc()
	h.index.MarkUnplaced(realID)
	return "", nil
}

// routeRequest attaches to a client's request the worker of the session its
// path names. It answers the client itself and returns false when that
// worker cannot be known or is not configured.
func (h *Handler) routeRequest(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *route) bool {
	start, end, ok := sessionSegment(r.URL.Path)
	if !ok {
		if list, requestID, ok := pendingRequestPath(r.URL.Path); ok && h.fleet.several() {
			rt.worker = h.workerAsking(r, next, list, requestID)
		}
		return true
	}
	id := r.URL.Path[start:end]
	worker, err := h.workerOf(r, next, id)
	var unknown errWorkerUnknown
	switch {
	case errors.As(err, &unknown):
		upstreamFailed(w, http.StatusServiceUnavailable, unknown.Error())
		return false
	case err != nil:
		storageFailed(w, "session id mapping could not be read: "+err.Error())
		return false
	}
	if worker != "" && !h.workerConfigured(w, id, worker) {
		return false
	}
	rt.worker, rt.session = worker, id
	return true
}

// workerConfigured answers 503 and returns false when a session's worker is
// not in the pool reverse_proxy balances (taken out of the configuration):
// waiting for it would be pointless, and sending the request elsewhere would
// be wrong. The session works again once the worker is configured again.
func (h *Handler) workerConfigured(w http.ResponseWriter, session, worker string) bool {
	if h.fleet.pool.Load() == nil {
		return true // not known yet: the policy decides
	}
	if _, ok := h.fleet.member(worker); ok {
		return true
	}
	sessionMetrics.workerDown.WithLabelValues(h.Namespace, worker).Inc()
	upstreamFailed(w, http.StatusServiceUnavailable, errWorkerRemoved{session: session, worker: worker}.Error())
	return false
}

// workerFailed answers a request whose session's worker could not serve it.
func workerFailed(w http.ResponseWriter, rt *route, err error) {
	if rt.handler != nil {
		sessionMetrics.workerDown.WithLabelValues(rt.handler.Namespace, rt.worker).Inc()
	}
	upstreamFailed(w, http.StatusServiceUnavailable, fmt.Sprintf("session %s is held by worker %s, which is unavailable (%s); requests for it wait up to lb_try_duration and never go to another worker", rt.session, rt.worker, cause(err)))
}

// pendingRequestPath recognises the answer to a pending permission or
// question request, /permission/{id}/reply or /question/{id}/reply|reject,
// and returns the list that holds the request and the request's id.
func pendingRequestPath(path string) (list, id string, ok bool) {
	for _, list := range []string{"/permission/", "/question/"} {
		rest, found := strings.CutPrefix(path, list)
		if !found {
			continue
		}
		id, action, found := strings.Cut(rest, "/")
		if found && id != "" && (action == "reply" || action == "reject") {
			return strings.TrimSuffix(list, "/"), id, true
		}
	}
	return "", "", false
}

// workerAsking returns the worker whose list of pending requests holds the
// request id: the one waiting for the answer. It is "" when no worker lists
// it, and the worker that the fallback picks then answers 404.
func (h *Handler) workerAsking(r *http.Request, next caddyhttp.Handler, list, requestID string) string {
	for _, a := range askEach(r, next, h.fleet.workers(), http.MethodGet, list, r.URL.RawQuery) {
		if a.err != nil || !a.answer.ok() {
			continue
		}
		var pending []struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(a.answer.body.Bytes(), &pending) != nil {
			continue
		}
		for _, p := range pending {
			if p.ID == requestID {
				return a.worker
			}
		}
	}
	return ""
}
