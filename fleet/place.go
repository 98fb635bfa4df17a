package fleet

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Place chooses the worker of a session about to be created under id,
// points r's route at it, and returns that worker's answer to GET
// /session/{id}: 404 when the id is free there. A child (parentID, a client
// id) goes to its parent's worker; a create an earlier attempt left pending
// goes back to the worker it was sent to (preferred), the only place its
// session can be; any other create goes to the worker the policy's fallback
// picks, asked with the create's own query and headers so that policies
// hashing them (query directory, header, cookie) see the create.
//
// With several workers the others are asked too, so that an id in use
// anywhere in the fleet is answered 409 as it would be on one opencode; a
// worker that is unavailable cannot be asked and is skipped, so creates of
// new ids keep flowing while a worker is down.
func (f *Fleet) Place(r *http.Request, next caddyhttp.Handler, id, parentID, preferred string) (*upstream.Answer, error) {
	rt := upstream.RouteOf(r)
	rt.Session = id
	worker := preferred
	if worker == "" && parentID != "" {
		parentWorker, err := f.WorkerOf(r, next, parentID)
		if err != nil {
			return nil, err
		}
		worker = parentWorker
	}
	path := "/session/" + url.PathEscape(id)
	answer, asked, err := upstream.AskWorker(r, next, worker, http.MethodGet, path, r.URL.RawQuery, nil)
	if err != nil {
		return nil, err
	}
	_, chosen := asked.Outcome()
	rt.Worker = chosen
	if answer.Status != http.StatusNotFound || !f.Several() {
		return answer, nil
	}
	for _, a := range upstream.AskEach(r, next, f.Workers(), http.MethodGet, path, "") {
		if a.Worker == chosen {
			continue
		}
		if a.Err == nil && a.Answer.OK() {
			return a.Answer, nil
		}
		if a.Err != nil {
			f.logger.Debug("an unavailable worker was not asked whether an id is free", zap.String("session_id", id), zap.String("worker", a.Worker))
		}
	}
	return answer, nil
}

// Pin points r's route at the worker of a session that is mapped (or, in
// direct mode, recorded) already, finding the worker of a mapping written
// before workers were recorded.
func (f *Fleet) Pin(r *http.Request, next caddyhttp.Handler, clientID, worker string) error {
	if worker == "" {
		var err error
		if worker, err = f.WorkerOf(r, next, clientID); err != nil {
			return err
		}
	}
	rt := upstream.RouteOf(r)
	rt.Worker, rt.Session = worker, clientID
	if worker != "" {
		if _, ok := f.Member(worker); !ok && f.Pool() != nil {
			return ErrWorkerRemoved{Session: clientID, Worker: worker}
		}
	}
	return nil
}

// PlacementFailed answers a create whose worker could not be chosen or asked.
func PlacementFailed(w http.ResponseWriter, err error) {
	var unknown ErrWorkerUnknown
	var removed ErrWorkerRemoved
	if errors.As(err, &unknown) || errors.As(err, &removed) {
		apierror.Upstream(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked whether the id is free: "+err.Error())
}
