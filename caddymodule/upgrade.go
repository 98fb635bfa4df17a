package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// isUpgradeRoute reports whether a path is one of opencode's routes that
// switch protocols: GET /pty/{ptyID}/connect, a terminal's websocket.
func isUpgradeRoute(path string) bool {
	rest, ok := strings.CutPrefix(path, "/pty/")
	if !ok {
		return false
	}
	id, sub, _ := strings.Cut(rest, "/")
	return id != "" && sub == "connect"
}

// dropUpgrade makes a request that asks to switch protocols on a route that
// never does an ordinary one.
func dropUpgrade(r *http.Request) {
	r.Header.Del("Upgrade")
	var keep []string
	for _, v := range r.Header.Values("Connection") {
		for _, token := range strings.Split(v, ",") {
			if token = strings.TrimSpace(token); token != "" && !strings.EqualFold(token, "upgrade") {
				keep = append(keep, token)
			}
		}
	}
	r.Header.Del("Connection")
	if len(keep) > 0 {
		r.Header.Set("Connection", strings.Join(keep, ", "))
	}
}

// proxyUpgrade forwards a websocket request with the session ids of its
// query rewritten and nothing else touched: the upgraded connection is the
// proxy's, and a wrapped writer would get in its way.
func (h *Handler) proxyUpgrade(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *upstream.Route) error {
	if !h.ids.Query(w, r) {
		return nil
	}
	return h.fleet.Routed(w, r, rt, next.ServeHTTP(w, r), false)
}

// passesUntouched reports whether the handler does nothing for a request
// before the upstream answers it, so that the upstream alone decides whether
// to serve its caller: a terminal's websocket whose query
// names no session; a GET or HEAD without a body whose path and query name
// no session and that is none of the routes the handler answers itself
// (/doc, the event streams, the fleet-wide reads).
func passesUntouched(r *http.Request) bool {
	switch {
	case strings.Contains(r.URL.RawQuery, idmap.Prefix):
		return false
	case r.Header.Get("Upgrade") != "":
		return isUpgradeRoute(r.URL.Path)
	case r.Method != http.MethodGet && r.Method != http.MethodHead,
		r.ContentLength != 0 || len(r.TransferEncoding) > 0,
		r.URL.Path == "/doc", events.IsStream(r.URL.Path), fleet.IsRead(r.URL.Path):
		return false
	}
	_, _, names := sessionSegment(r.URL.Path)
	return !names
}
