package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Route points a client's request at the worker of the session its path
// names (id is that session's client id, "" for a path that names none). It
// answers the client itself and returns false when that worker cannot be
// known or is not configured. A path that names no session but answers a
// pending permission or question goes to the worker that asked it.
func (f *Fleet) Route(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *upstream.Route, id string) bool {
	if id == "" {
		if list, requestID, ok := pendingRequestPath(r.URL.Path); ok && f.Several() {
			rt.Worker = f.workerAsking(r, next, list, requestID)
		}
		return true
	}
	wait := true
	if changes(r.Method) && f.Several() {
		// Counted until the request is done (rt.Leave), so that a move of
		// the session waits for it before copying.
		realID, err := f.upstreamID(r, id)
		if err != nil {
			f.logger.Error("session id mapping could not be read", zap.Error(err))
			apierror.Storage(w, "session id mapping could not be read")
			return false
		}
		leave, _, err := f.moves.Enter(r.Context(), realID)
		if err != nil {
			return false // the client left while the session was moved
		}
		rt.SetLeave(leave)
		wait = false
	}
	worker, err := f.workerOf(r, next, id, wait)
	var unknown ErrWorkerUnknown
	switch {
	case errors.As(err, &unknown):
		apierror.Upstream(w, http.StatusServiceUnavailable, unknown.Error())
		return false
	case err != nil:
		f.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return false
	}
	if worker != "" && !f.configured(w, id, worker) {
		return false
	}
	rt.Worker, rt.Session = worker, id
	return true
}

// changes reports whether a request of method may change its session.
func changes(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// ErrWorkerRemoved: the session's worker is not in reverse_proxy's pool.
type ErrWorkerRemoved struct{ Session, Worker string }

func (e ErrWorkerRemoved) Error() string {
	return fmt.Sprintf("session %s is held by worker %s, which is not among reverse_proxy's upstreams", e.Session, e.Worker)
}

// configured answers 503 and returns false when a session's worker is not
// in the pool reverse_proxy balances (taken out of the configuration):
// waiting for it would be pointless, and sending the request elsewhere would
// be wrong. The session works again once the worker is configured again.
func (f *Fleet) configured(w http.ResponseWriter, session, worker string) bool {
	if f.Pool() == nil {
		return true // not known yet: the policy decides
	}
	if _, ok := f.Member(worker); ok {
		return true
	}
	workerDown.WithLabelValues(f.namespace, worker).Inc()
	apierror.Upstream(w, http.StatusServiceUnavailable, ErrWorkerRemoved{Session: session, Worker: worker}.Error())
	return false
}

// Routed finishes a proxied request: the route's Done learns from it, and a
// request for a session whose worker could not serve it is answered with a
// 503 naming the worker, in opencode's error shape, instead of Caddy's bare
// error. written says whether the response has started.
func (f *Fleet) Routed(w http.ResponseWriter, r *http.Request, rt *upstream.Route, err error, written bool) error {
	rt.Finish(r)
	if err == nil || written || rt == nil || rt.Worker == "" {
		return err
	}
	switch upstream.FailureStatus(err) {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		f.WorkerFailed(w, rt, err)
		return nil
	}
	return err
}

// WorkerFailed answers a request whose session's worker could not serve it.
func (f *Fleet) WorkerFailed(w http.ResponseWriter, rt *upstream.Route, err error) {
	workerDown.WithLabelValues(f.namespace, rt.Worker).Inc()
	apierror.Upstream(w, http.StatusServiceUnavailable, fmt.Sprintf("session %s is held by worker %s, which is unavailable (%s); requests for it wait up to lb_try_duration and never go to another worker", rt.Session, rt.Worker, upstream.Cause(err)))
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
func (f *Fleet) workerAsking(r *http.Request, next caddyhttp.Handler, list, requestID string) string {
	for _, a := range upstream.AskEach(r, next, f.Workers(), http.MethodGet, list, r.URL.RawQuery) {
		if a.Err != nil || !a.Answer.OK() {
			continue
		}
		var pending []struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(a.Answer.Body.Bytes(), &pending) != nil {
			continue
		}
		for _, p := range pending {
			if p.ID == requestID {
				return a.Worker
			}
		}
	}
	return ""
}
