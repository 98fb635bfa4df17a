package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// ServeHTTP creates sessions under client ids, deletes them, and rewrites ids
// on everything else that passes through.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
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
	case r.Method == http.MethodDelete && isSessionItem(r.URL.Path):
		return h.serveDelete(w, r, next)
	}
	if id, route, ok := h.keyedPrompt(r); ok {
		if _, missing := createMissingTarget(r); missing && h.CreateMissing && h.createMissing(w, r, next, id) {
			return nil
		}
		return h.servePrompt(w, r, next, id, route)
	}
	if h.CreateMissing {
		if id, ok := createMissingTarget(r); ok {
			if answered := h.createMissing(w, r, next, id); answered {
				return nil
			}
		}
	}
	return h.proxy(w, r, next, nil)
}

// isSessionItem reports whether path names one session: /session/{id} or
// /api/session/{id}, without a sub-resource.
func isSessionItem(path string) bool {
	_, end, ok := sessionSegment(path)
	return ok && end == len(strings.TrimSuffix(path, "/"))
}

// proxy forwards a request with its ids rewritten and rewrites the response.
// body is the request body when the caller has read it already.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, body []byte) error {
	if h.Mode == ModeDirect {
		// Ids are the upstream's own: nothing to rewrite.
		if body != nil {
			setBody(r, body)
		}
		return next.ServeHTTP(w, r)
	}
	if !h.toUpstream(w, r, body) {
		return nil
	}
	if r.Method == http.MethodHead {
		// No body to rewrite, and its Content-Length must stay the GET's.
		return next.ServeHTTP(w, r)
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
		return err // nothing written yet: let Caddy's error handling answer
	}
	if ferr := rw.finish(); err == nil {
		err = ferr
	}
	return err
}
