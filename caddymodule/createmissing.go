package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
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
		storageFailed(w, "session id mapping could not be read")
		return true
	case known:
		return false
	}
	existing, err := askUpstream(r, next, http.MethodGet, "/session/"+url.PathEscape(id), "", nil)
	if err != nil || existing.status != http.StatusNotFound {
		return false // the upstream has it (or is failing: the request will say so)
	}

	// A create with no fields but the request's location.
	create := r.Clone(ctx)
	create.Body, create.ContentLength = http.NoBody, 0
	location := requestLocation(r)
	req := &createRequest{id: id, body: map[string]json.RawMessage{}, directory: location["directory"], fields: idmap.NewFields(nil, location)}
	answer := &upstreamAnswer{header: http.Header{}}
	if h.Mode == ModeDirect {
		_ = h.createDirect(answer, create, next, req)
	} else {
		_ = h.create(answer, create, next, req)
	}
	if answer.status == http.StatusOK || answer.status == http.StatusConflict {
		// Created, or created meanwhile by another request (a replay or a
		// 409 under a strict policy): either way the id exists now.
		if answer.header.Get(ReplayHeader) == "" && answer.status == http.StatusOK {
			h.count(sessionMetrics.createdMissing)
			h.logger.Info("created a missing session", zap.String("session_id", id), zap.String("uri", r.RequestURI))
		}
		return false
	}
	h.relay(w, r, answer, false)
	return true
}
