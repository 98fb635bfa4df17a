package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// ServeHTTP creates sessions under client ids, deletes them, routes every
// request that names a session to the worker holding it, answers fleet-wide
// reads from all workers, and rewrites ids on everything that passes through.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.fleet.misconfigured.Load() {
		writeError(w, http.StatusInternalServerError, "ConfigurationError", errMisrouting, nil)
		return nil
	}
	rt := h.attachRoute(r)
	if r.Header.Get("Upgrade") != "" {
		// Websockets (terminal sessions) carry no session ids in their path,
		// and a wrapped writer would get in the way of the upgrade.
		return next.ServeHTTP(w, r)
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/doc":
		return h.serveDoc(w, r, next)
	case r.Method == http.MethodPost && (r.URL.Path == "/session" || r.URL.Path == "/api/session"):
		return h.serveCreate(w, r, next)
	case r.Method == http.MethodGet && isEventStream(r.URL.Path) && !h.Events.Off:
		return h.serveEvents(w, r, next)
	case r.Method == http.MethodGet && fleetReads[r.URL.Path] != nil:
		if h.learnPool(r, next); h.fleet.several() {
			return fleetReads[r.URL.Path](h, w, r, next)
		}
	}
	if !h.routeRequest(w, r, next, rt) {
		return nil
	}
	if r.Method == http.MethodDelete && isSessionItem(r.URL.Path) {
		return h.serveDelete(w, r, next)
	}
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/fork") && isSessionItem(strings.TrimSuffix(r.URL.Path, "/fork")) {
		return h.proxyNewSession(w, r, next, nil)
	}
	if h.CreateMissing {
		if id, ok := createMissingTarget(r); ok {
			if answered := h.createMissing(w, r, next, id); answered {
				return nil
			}
			// The session may be new, on the worker its create chose.
			if !h.routeRequest(w, r, next, rt) {
				return nil
			}
		}
	}
	if id, route, ok := h.keyedPrompt(r); ok {
		return h.servePrompt(w, r, next, id, route)
	}
	return h.proxy(w, r, next, nil)
}

// routed finishes a proxied request: the handler learns from its route, and
// a request for a session whose worker could not serve it is answered with a
// 503 naming the worker, in opencode's error shape, instead of Caddy's bare
// error. written says whether the response has started.
func (h *Handler) routed(w http.ResponseWriter, r *http.Request, rt *route, err error, written bool) error {
	rt.done(r)
	if err == nil || written || rt == nil || rt.worker == "" {
		return err
	}
	switch failureStatus(err) {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		workerFailed(w, rt, err)
		return nil
	}
	return err
}

// isEventStream reports whether path is one of opencode's event streams.
func isEventStream(path string) bool { return path == "/event" || path == "/global/event" }

// isSessionItem reports whether path names one session: /session/{id} or
// /api/session/{id}, without a sub-resource.
func isSessionItem(path string) bool {
	_, end, ok := sessionSegment(path)
	return ok && end == len(strings.TrimSuffix(path, "/"))
}

// proxy forwards a request with its ids rewritten and rewrites the response.
// body is the request body when the caller has read it already.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, body []byte) error {
	rt := routeOf(r)
	if h.Mode == ModeDirect {
		// Ids are the upstream's own: nothing to rewrite.
		if body != nil {
			setBody(r, body)
		}
		return h.routed(w, r, rt, next.ServeHTTP(w, r), false)
	}
	if !h.toUpstream(w, r, body) {
		return nil
	}
	if r.Method == http.MethodHead {
		// No body to rewrite, and its Content-Length must stay the GET's.
		return h.routed(w, r, rt, next.ServeHTTP(w, r), false)
	}
	rw := &rewritingWriter{
		w:         w,
		lookup:    &lookupFunc{resolve: h.index.ClientOf, ctx: r.Context()},
		maxBuffer: h.MaxBufferSize,
		report:    func(bytes int, ids int64) { h.countRewrite("response", bytes, ids) },
	}
	err := next.ServeHTTP(rw, r)
	if rw.lookup.err != nil {
		// The response has gone out (or is going out) already; a real id may
		// have passed unrewritten. Say so loudly.
		h.logger.Error("mapping lookup failed while rewriting a response", zap.Error(rw.lookup.err), zap.String("uri", r.RequestURI))
	}
	if err != nil && rw.mode == undecided {
		// Nothing written yet: let Caddy's error handling answer.
		return h.routed(w, r, rt, err, false)
	}
	rt.done(r)
	if ferr := rw.finish(); err == nil {
		err = ferr
	}
	return err
}
