package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// createDirect makes, finds or refuses the session of one id on an upstream
// that honours ids itself. The id reaches the upstream unchanged; the module
// keeps a record of the fields it was created with (a mapping of the id to
// itself) so that validation, the duplicate policy and exactly-once creation
// are the same as in mapping mode.
func (h *Handler) createDirect(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest) error {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id))
	lock := h.lockForCreate(w, r, next, req)
	if lock == nil {
		return nil
	}
	defer lock.unlock()
	pending, pendingFound := lock.pending, lock.pendingFound

	existing, err := h.fleet.Place(r, next, req.id, req.placedWith(), pending.Worker)
	if err != nil {
		fleet.PlacementFailed(w, err)
		return nil
	}
	offers, err := h.features(r, next)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked what it supports: "+err.Error())
		return nil
	}
	if offers.refusal != nil {
		log.Error("direct mode cannot work with this upstream", zap.String("worker", upstream.Worker(r)), zap.Error(offers.refusal))
		apierror.Upstream(w, http.StatusNotImplemented, offers.refusal.Error())
		return nil
	}
	if req.forkOf != "" && !offers.forkID {
		apierror.Upstream(w, http.StatusNotImplemented, "the upstream cannot fork a session under a chosen id (its POST /session/{sessionID}/fork declares no id); use mode mapping for forks under chosen ids")
		return nil
	}
	capability := offers.idRoute

	if existing.OK() && pendingFound {
		// An earlier attempt made the session and stopped before recording it:
		// finish it when it was asked for with these fields, else replace it.
		if len(pending.Fields.Diff(req.fields)) == 0 {
			log.Info("finishing an interrupted create")
			h.count(sessionMetrics.adopted)
			return h.finishDirect(w, r, next, req, capability)
		}
		log.Info("deleting the session of an interrupted create made with other fields")
		if existing, err = upstream.Ask(r, next, http.MethodDelete, "/session/"+url.PathEscape(req.id), "", nil); err != nil || !existing.OK() {
			apierror.Upstream(w, http.StatusBadGateway, "upstream could not delete the session of an interrupted create")
			return nil
		}
		existing.Status = http.StatusNotFound
	}
	switch {
	case existing.OK():
		h.count(sessionMetrics.conflicts)
		apierror.Conflict(w, req.id, fmt.Sprintf("session id %s is already used by an upstream session", req.id), nil)
		return nil
	case existing.Status != http.StatusNotFound:
		h.ids.Relay(w, r, existing, false)
		return nil
	}

	if err := h.index.Store.SavePending(ctx, idmap.Pending{ClientID: req.id, Fields: req.fields, Query: r.URL.RawQuery, Started: time.Now().UTC(), Worker: upstream.Worker(r)}); err != nil {
		h.logger.Error("the session record could not be read or written", zap.Error(err))
		apierror.Storage(w, "the session record could not be read or written")
		return nil
	}
	var answer *upstream.Answer
	switch {
	case req.forkOf != "":
		answer, err = h.forkNative(r, next, req)
	case capability == capNative:
		body := cloneBody(req.body)
		body["id"], _ = json.Marshal(req.id)
		raw, _ := json.Marshal(body)
		answer, err = upstream.Ask(r, next, http.MethodPost, "/session", r.URL.RawQuery, raw)
	case req.parentID() != "":
		if !offers.replay {
			apierror.Upstream(w, http.StatusNotImplemented, "the upstream cannot create a child session under a chosen id (no POST /sync/replay)")
			return nil
		}
		answer, err = h.createChildByReplay(r, next, req)
	default:
		answer, err = h.createV2(r, next, req)
	}
	if err != nil {
		log.Warn("upstream create failed", zap.Error(err))
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not create the session: "+err.Error())
		return nil
	}
	if !answer.OK() {
		if answer.Status < 500 {
			_ = h.index.Store.RemovePending(ctx, req.id)
		}
		h.ids.Relay(w, r, answer, false)
		return nil
	}
	return h.finishDirect(w, r, next, req, capability)
}

// finishDirect completes a direct create whose session exists upstream: it
// applies the fields only a v1 PATCH can set (again, if an interrupted
// attempt did already), records the id, and answers with the session.
func (h *Handler) finishDirect(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, capability capability) error {
	ctx := r.Context()
	if capability == capOpencodeV2 && req.parentID() == "" && req.forkOf == "" {
		if patch := req.patchBody(); patch != nil {
			answer, err := upstream.Ask(r, next, http.MethodPatch, "/session/"+req.id, "", patch)
			if err != nil {
				apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not set the session's fields: "+err.Error())
				return nil
			}
			if !answer.OK() {
				h.ids.Relay(w, r, answer, false)
				return nil
			}
		}
	}
	if err := h.index.Save(ctx, idmap.Mapping{ClientID: req.id, RealID: req.id, Fields: req.fields, Created: time.Now().UTC(), Worker: upstream.Worker(r)}); err != nil {
		h.logger.Error("the session was created but its record could not be stored; retry the create", zap.Error(err))
		apierror.Storage(w, "the session was created but its record could not be stored; retry the create")
		return nil
	}
	if err := h.index.Store.RemovePending(ctx, req.id); err != nil {
		h.logger.Warn("could not remove pending create record", zap.String("session_id", req.id), zap.Error(err))
	}
	h.logger.Info("session created", zap.String("session_id", req.id))
	h.count(sessionMetrics.creates)
	answer, err := h.sessionAnswer(r, next, req.id, req.v2)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "the session was created but could not be read back: "+err.Error())
		return nil
	}
	h.ids.Relay(w, r, answer, false)
	return nil
}

// forkNative forks through an upstream whose fork route takes the id.
func (h *Handler) forkNative(r *http.Request, next caddyhttp.Handler, req *createRequest) (*upstream.Answer, error) {
	body := cloneBody(req.body)
	body["id"], _ = json.Marshal(req.id)
	raw, _ := json.Marshal(body)
	answer, err := upstream.Ask(r, next, http.MethodPost, "/session/"+url.PathEscape(req.forkOf)+"/fork", r.URL.RawQuery, raw)
	if err != nil || !answer.OK() {
		return answer, err
	}
	if id, err := sessionIDOf(answer.Body.Bytes()); err != nil || id != req.id {
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream answered the fork without the session %s", req.id))
	}
	// Moved with its parent (relocation).
	if err := h.index.Store.SaveForked(r.Context(), req.id, req.forkOf); err != nil {
		h.logger.Warn("could not record a fork", zap.String("real_id", req.id), zap.Error(err))
	}
	return answer, nil
}

// createV2 creates through opencode's v2 route, which takes the id, agent,
// model and location; the rest is set by finishDirect's PATCH.
func (h *Handler) createV2(r *http.Request, next caddyhttp.Handler, req *createRequest) (*upstream.Answer, error) {
	body := map[string]json.RawMessage{}
	body["id"], _ = json.Marshal(req.id)
	for _, name := range []string{"agent", "model"} {
		if v, ok := req.body[name]; ok {
			body[name] = v
		}
	}
	if req.directory != "" {
		body["location"], _ = json.Marshal(map[string]string{"directory": req.directory})
	}
	raw, _ := json.Marshal(body)
	answer, err := upstream.Ask(r, next, http.MethodPost, "/api/session", "", raw)
	if err != nil || !answer.OK() {
		return answer, err
	}
	// Never take a 200 for success unless it is the session asked for:
	// opencode 1.15 answers this route with its web UI's HTML.
	var created struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(answer.Body.Bytes(), &created) != nil || created.Data.ID != req.id {
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("upstream answered POST /api/session without the session %s", req.id))
	}
	return answer, nil
}

// createChildByReplay creates a child session under a chosen id the only way
// stock opencode allows: by replaying a session.created sync event with a
// complete session object, modelled on the parent's.
func (h *Handler) createChildByReplay(r *http.Request, next caddyhttp.Handler, req *createRequest) (*upstream.Answer, error) {
	parent, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(req.parentID()), "", nil)
	if err != nil || !parent.OK() {
		return parent, err
	}
	var info map[string]json.RawMessage
	if err := json.Unmarshal(parent.Body.Bytes(), &info); err != nil {
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("parent session is not JSON: %w", err))
	}
	for _, name := range []string{"share", "summary", "revert", "metadata", "permission", "agent", "model", "workspaceID"} {
		delete(info, name)
	}
	for _, name := range []string{"title", "metadata", "permission", "agent", "model"} {
		if v, ok := req.body[name]; ok {
			info[name] = v
		}
	}
	now := time.Now()
	if _, ok := req.body["title"]; !ok {
		info["title"], _ = json.Marshal("Child session - " + now.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	info["id"], _ = json.Marshal(req.id)
	info["parentID"], _ = json.Marshal(req.parentID())
	info["slug"], _ = json.Marshal(req.id[len(idmap.Prefix):])
	info["time"], _ = json.Marshal(map[string]int64{"created": now.UnixMilli(), "updated": now.UnixMilli()})
	directory := req.directory
	if directory == "" {
		_ = json.Unmarshal(info["directory"], &directory)
	}
	info["directory"], _ = json.Marshal(directory)
	events, _ := json.Marshal(map[string]any{
		"directory": directory,
		"events": []any{map[string]any{
			"id": idmap.NewID("evt", false), "aggregateID": req.id, "seq": 0, "type": "session.created.1",
			"data": map[string]any{"sessionID": req.id, "info": info},
		}},
	})
	return upstream.Ask(r, next, http.MethodPost, "/sync/replay", "directory="+url.QueryEscape(directory), events)
}

// sessionAnswer reads a session back in the shape the client asked in: v1
// (GET /session/{id}) or v2 ({"data": ...} from GET /api/session/{id}, or
// the v1 object wrapped so where the upstream has no such route).
func (h *Handler) sessionAnswer(r *http.Request, next caddyhttp.Handler, id string, v2 bool) (*upstream.Answer, error) {
	if v2 {
		answer, err := upstream.Ask(r, next, http.MethodGet, "/api/session/"+id, "", nil)
		if err != nil {
			return nil, err
		}
		var probe struct {
			Data json.RawMessage `json:"data"`
		}
		if answer.OK() && json.Unmarshal(answer.Body.Bytes(), &probe) == nil && len(probe.Data) > 0 {
			return answer, nil
		}
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/session/"+id, "", nil)
	if err != nil || !v2 || !answer.OK() {
		return answer, err
	}
	wrapped := upstream.NewAnswer(answer.Status, answer.Header())
	wrapped.Body.WriteString(`{"data":`)
	wrapped.Body.Write(answer.Body.Bytes())
	wrapped.Body.WriteString(`}`)
	return wrapped, nil
}

func cloneBody(body map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(body)+1)
	for k, v := range body {
		out[k] = v
	}
	return out
}
