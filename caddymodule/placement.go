package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// placeCreate chooses the worker of a session about to be created under
// req.id, points r's route at it, and returns that worker's answer to GET
// /session/{id}: 404 when the id is free there. A child goes to its parent's
// worker; a create an earlier attempt left pending goes back to the worker
// it was sent to (preferred), the only place its session can be; any other
// create goes to the worker the policy's fallback picks, asked with the
// create's own query and headers so that policies hashing them (query
// directory, header, cookie) see the create.
//
// With several workers the others are asked too, so that an id in use
// anywhere in the fleet is answered 409 as it would be on one opencode; a
// worker that is unavailable cannot be asked and is skipped, so creates of
// new ids keep flowing while a worker is down.
func (h *Handler) placeCreate(r *http.Request, next caddyhttp.Handler, req *createRequest, preferred string) (*upstreamAnswer, error) {
	rt := routeOf(r)
	rt.session = req.id
	worker := preferred
	if worker == "" && req.parentID() != "" {
		parentWorker, err := h.workerOf(r, next, req.parentID())
		if err != nil {
			return nil, err
		}
		worker = parentWorker
	}
	path := "/session/" + url.PathEscape(req.id)
	answer, asked, err := askWorker(r, next, worker, http.MethodGet, path, r.URL.RawQuery, nil)
	if err != nil {
		return nil, err
	}
	_, chosen := asked.outcome()
	rt.worker = chosen
	if answer.status != http.StatusNotFound || !h.fleet.several() {
		return answer, nil
	}
	var others = h.fleet.workers()
	for _, a := range askEach(r, next, others, http.MethodGet, path, "") {
		if a.worker == chosen {
			continue
		}
		if a.err == nil && a.answer.ok() {
			return a.answer, nil
		}
		if a.err != nil {
			h.logger.Debug("an unavailable worker was not asked whether an id is free", zap.String("session_id", req.id), zap.String("worker", a.worker))
		}
	}
	return answer, nil
}

// pinExisting points r's route at the worker of a session that is mapped (or,
// in direct mode, recorded) already, finding the worker of a mapping written
// before workers were recorded.
func (h *Handler) pinExisting(r *http.Request, next caddyhttp.Handler, clientID, worker string) error {
	if worker == "" {
		var err error
		if worker, err = h.workerOf(r, next, clientID); err != nil {
			return err
		}
	}
	rt := routeOf(r)
	rt.worker, rt.session = worker, clientID
	if worker != "" {
		if _, ok := h.fleet.member(worker); !ok && h.fleet.pool.Load() != nil {
			return errWorkerRemoved{session: clientID, worker: worker}
		}
	}
	return nil
}

// errWorkerRemoved: the session's worker is not in reverse_proxy's pool.
type errWorkerRemoved struct{ session, worker string }

func (e errWorkerRemoved) Error() string {
	return fmt.Sprintf("session %s is held by worker %s, which is not among reverse_proxy's upstreams", e.session, e.worker)
}

// placementFailed answers a create whose worker could not be chosen or asked.
func (h *Handler) placementFailed(w http.ResponseWriter, err error) {
	var unknown errWorkerUnknown
	var removed errWorkerRemoved
	if errors.As(err, &unknown) || errors.As(err, &removed) {
		upstreamFailed(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	upstreamFailed(w, failureStatus(err), "upstream could not be asked whether the id is free: "+err.Error())
}

// chosenWorker is the worker r's route points at.
func chosenWorker(r *http.Request) string {
	if rt := routeOf(r); rt != nil {
		return rt.worker
	}
	return ""
}

// proxyNewSession forwards a request that makes a session under an id the
// upstream picks (a create without an id, a fork), and with several workers
// records which worker made it, so that its requests never need to ask every
// worker. A child goes to its parent's worker. The answer is relayed with its
// ids rewritten, as on any response.
func (h *Handler) proxyNewSession(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, raw []byte) error {
	if h.learnPool(r, next); !h.fleet.several() {
		return h.proxy(w, r, next, raw)
	}
	rt := routeOf(r)
	if parent := parentIDOf(raw); parent != "" && rt.worker == "" {
		worker, err := h.workerOf(r, next, parent)
		if err != nil {
			h.placementFailed(w, err)
			return nil
		}
		rt.worker, rt.session = worker, parent
	}
	if h.Mode == ModeMapping {
		if !h.toUpstream(w, r, raw) {
			return nil
		}
		raw, _ = io.ReadAll(r.Body)
	} else if raw == nil && r.Body != nil && r.Body != http.NoBody {
		var err error
		if raw, err = readBody(r, h.MaxBodySize); err != nil {
			h.writeBodyError(w, err)
			return nil
		}
	}
	if len(raw) == 0 {
		raw = nil
	}
	answer, asked, err := askWorker(r, next, rt.worker, r.Method, r.URL.Path, r.URL.RawQuery, raw)
	if err != nil {
		if rt.worker != "" {
			workerFailed(w, rt, err)
		} else {
			upstreamFailed(w, failureStatus(err), "upstream could not create the session: "+err.Error())
		}
		return nil
	}
	if _, chosen := asked.outcome(); answer.ok() && chosen != "" {
		if id := newSessionIDOf(answer.body.Bytes()); id != "" {
			if err := h.index.SaveWorker(r.Context(), id, chosen); err != nil {
				// The session exists; its worker will be found by asking.
				h.logger.Warn("could not record the worker of a new session", zap.String("real_id", id), zap.Error(err))
			}
		}
	}
	h.relay(w, r, answer, false)
	return nil
}

// parentIDOf reads parentID from a JSON create body, if it has one.
func parentIDOf(raw []byte) string {
	var body struct {
		ParentID string `json:"parentID"`
	}
	_ = json.Unmarshal(raw, &body)
	return body.ParentID
}

// newSessionIDOf reads the id of a session in a v1 ({…}) or v2
// ({"data": {…}}) answer.
func newSessionIDOf(body []byte) string {
	var s struct {
		ID   string `json:"id"`
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &s) != nil {
		return ""
	}
	if s.ID == "" {
		s.ID = s.Data.ID
	}
	if !idmap.IsToken(s.ID) {
		return ""
	}
	return s.ID
}
