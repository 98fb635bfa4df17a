package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// ServeHTTP creates sessions under client ids, deletes them, routes every
// request that names a session to the worker holding it, answers fleet-wide
// reads from all workers, and rewrites ids on everything that passes through.
//
// The order is behaviour, and it is this:
//
//  1. With several upstreams behind reverse_proxy and no lb_policy
//     session_ids, every request is refused with 500 (fleet.ErrMisrouting).
//     Every request that goes on reaches reverse_proxy through goneAware: a
//     session its recorded worker answers 404 for is made again from its
//     journal and the request sent to it there.
//  2. Every request gets its route (upstream.Route), through which the
//     policy reports the pool; the fleet learns from it when the request is
//     done.
//  3. A CORS preflight goes on as it is. A request the handler spends
//     nothing on before the upstream has answered it (passesUntouched: a
//     GET without a body or an id that is not one of the routes below, a
//     terminal's websocket naming no session) goes on with its answer
//     rewritten: the upstream alone decides whom it serves, as it would
//     without the handler (opencode serves its web manifest, and a
//     websocket with a ticket, to anyone). Every other caller is admitted or
//     refused (access.Gate): a caller the upstream would refuse gets the
//     upstream's refusal, before anything is read, looked up or answered
//     from records.
//  4. A request with an Upgrade header on the one route that upgrades
//     (/pty/{id}/connect, a terminal's websocket) goes on with only the ids
//     of its query rewritten: a wrapped writer would get in the way of the
//     upgrade. On any other route the Upgrade header is dropped and the
//     request handled like any other.
//  5. These are answered before any routing: GET /doc (the upstream's
//     OpenAPI document with what the handler adds); POST /session and
//     /api/session (a create under the client's id, else an ordinary create
//     placed by the fleet); GET /event and /global/event (resumable streams,
//     or with events off and several workers each client's own merged
//     stream); with several workers, the fleet-wide reads (fleet.IsRead).
//  6. Every other request is pointed at the worker of the session its path
//     names, found if need be; a session whose worker cannot be known or is
//     not configured is answered 503 here.
//  7. Then, by what the request is: DELETE of a session; POST
//     /session/{id}/fork (on the parent's worker; with an id in its body,
//     made under that id exactly once, as a create); with
//     create_missing, the session of an unknown well-formed id is created
//     first (and the request routed again, to the worker its create chose);
//     a keyed prompt (Idempotency-Key) is answered exactly once; anything
//     else is forwarded with its ids rewritten.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.fleet.Misconfigured() {
		apierror.Write(w, http.StatusInternalServerError, "ConfigurationError", fleet.ErrMisrouting, nil)
		return nil
	}
	rt := upstream.Attach(r, h.observe)
	defer rt.Leave()
	next = goneAware{h: h, next: next}
	if h.moves.AnyDraining() {
		rt.Avoid = h.avoidWorker
	}
	if r.Method == http.MethodOptions && r.Header.Get("Upgrade") == "" {
		return next.ServeHTTP(w, r) // a CORS preflight: no ids in its answer
	}
	if passesUntouched(r) {
		if !h.route(w, r, next, rt) {
			return nil
		}
		if r.Header.Get("Upgrade") != "" {
			return h.proxyUpgrade(w, r, next, rt)
		}
		return h.proxy(w, r, next, nil)
	}
	admitted, err := h.gate.Admit(w, r, next)
	if admitted == nil {
		return err
	}
	r = admitted
	if r.Header.Get("Upgrade") != "" {
		if isUpgradeRoute(r.URL.Path) {
			return h.proxyUpgrade(w, r, next, rt)
		}
		dropUpgrade(r) // nothing else upgrades: an ordinary request
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/doc":
		return h.serveDoc(w, r, next)
	case r.Method == http.MethodPost && (r.URL.Path == "/session" || r.URL.Path == "/api/session"):
		return h.serveCreate(w, r, next)
	case r.Method == http.MethodGet && events.IsStream(r.URL.Path):
		if h.streams.Resumable() {
			return h.streams.Serve(w, r, next)
		}
		if h.fleet.Learn(r, next); h.fleet.Several() {
			return h.streams.ServeMerged(w, r, next)
		}
	case r.Method == http.MethodGet && fleet.IsRead(r.URL.Path):
		if h.fleet.Learn(r, next); h.fleet.Several() {
			if answer, ok := h.fleet.Read(w, r, next); ok {
				h.ids.Relay(w, r, answer, false)
			}
			return nil
		}
	}
	if !h.route(w, r, next, rt) {
		return nil
	}
	if r.Method == http.MethodDelete && isSessionItem(r.URL.Path) {
		return h.serveDelete(w, r, next)
	}
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/fork") && isSessionItem(strings.TrimSuffix(r.URL.Path, "/fork")) {
		return h.serveFork(w, r, next)
	}
	if h.CreateMissing {
		if id, ok := createMissingTarget(r); ok {
			if answered := h.createMissing(w, r, next, id); answered {
				return nil
			}
			// The session may be new, on the worker its create chose.
			if !h.route(w, r, next, rt) {
				return nil
			}
		}
	}
	if id, route, ok := h.prompts.Keyed(r); ok {
		return h.prompts.Serve(w, r, next, id, route)
	}
	return h.proxy(w, r, next, nil)
}

// route points a client's request at the worker of the session its path
// names (see fleet.Route); false when it answered the client itself.
func (h *Handler) route(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *upstream.Route) bool {
	id := ""
	if start, end, ok := sessionSegment(r.URL.Path); ok {
		id = r.URL.Path[start:end]
	}
	return h.fleet.Route(w, r, next, rt, id)
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
	rt := upstream.RouteOf(r)
	if !h.ids.Request(w, r, body) {
		return nil
	}
	rw := h.ids.Response(w, r)
	if rw == nil {
		return h.fleet.Routed(w, r, rt, next.ServeHTTP(w, r), false)
	}
	err := next.ServeHTTP(rw, r)
	if rw.lookup.err != nil {
		// The response has gone out (or is going out) already; a real id may
		// have passed unrewritten. Say so loudly.
		h.logger.Error("mapping lookup failed while rewriting a response", zap.Error(rw.lookup.err), zap.String("uri", r.RequestURI))
	}
	if err != nil && rw.mode == undecided {
		// Nothing written yet: let Caddy's error handling answer.
		return h.fleet.Routed(w, r, rt, err, false)
	}
	rt.Finish(r)
	if ferr := rw.finish(); err == nil {
		err = ferr
	}
	return err
}
