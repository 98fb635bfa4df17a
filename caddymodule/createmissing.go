package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// createMissingTarget returns the session id of a request create_missing
// applies to (see Handler.CreateMissing).
func createMissingTarget(r *http.Request) (string, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/session/")
	if !ok {
		return "", false
	}
	id, sub, _ := strings.Cut(rest, "/")
	switch {
	case sub == "" && r.Method == http.MethodGet,
		sub == "message" && (r.Method == http.MethodGet || r.Method == http.MethodPost),
		(sub == "prompt_async" || sub == "command" || sub == "shell") && r.Method == http.MethodPost:
		return id, idmap.Validate(id) == nil
	}
	return "", false
}

// createMissing creates the session of a well-formed id that neither the
// handler nor the upstream knows, before the request that names it goes on.
// It reports true when it answered the client itself (the create failed).
func (h *Handler) createMissing(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, id string) bool {
	ctx := r.Context()
	// Through the cache: this runs on every request to these routes. In
	// direct mode an id's record maps it to itself.
	_, known, err := h.index.RealOf(ctx, id)
	switch {
	case err != nil:
		h.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return true
	case known:
		return false
	}
	// Deleted through the handler: it stays deleted, and the request goes on
	// to be answered 404 by the upstream, until an explicit create.
	if deleted, err := h.index.Store.Deleted(ctx, id); err != nil {
		h.logger.Error("the tombstone of a session id could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return true
	} else if deleted {
		return false
	}
	existing, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(id), "", nil)
	if err != nil || existing.Status != http.StatusNotFound {
		return false // the upstream has it (or is failing: the request will say so)
	}

	// A create with no fields but the request's location.
	create := r.Clone(ctx)
	create.Body, create.ContentLength = http.NoBody, 0
	location := requestLocation(r)
	req := &createRequest{id: id, body: map[string]json.RawMessage{}, directory: location["directory"], fields: idmap.NewFields(nil, location)}
	answer := upstream.NewAnswer(0, nil)
	_ = h.createSession(answer, create, next, req)
	if answer.Status == http.StatusOK || answer.Status == http.StatusConflict {
		// Created, or created meanwhile by another request (a replay or a
		// 409 under a strict policy): either way the id exists now.
		if answer.Header().Get(ReplayHeader) == "" && answer.Status == http.StatusOK {
			h.count(sessionMetrics.createdMissing)
			h.logger.Info("created a missing session", zap.String("session_id", id), zap.String("uri", r.RequestURI))
		}
		return false
	}
	h.ids.Relay(w, r, answer, false)
	return true
}
