package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
)

// createRequest is a create that names its id: v1 POST /session, or v2
// POST /api/session translated to the v1 body.
type createRequest struct {
	id        string
	body      map[string]json.RawMessage // the v1 JSON body without "id"
	directory string                     // from the query, header or v2 location
	fields    idmap.Fields
	v2        bool // answer in the v2 shape, {"data": session}

	// forkOf is, for a fork under a chosen id (POST /session/{forkOf}/fork),
	// the client id of the session forked; body is then the fork's body.
	forkOf string
}

func (req *createRequest) parentID() string {
	var id string
	_ = json.Unmarshal(req.body["parentID"], &id)
	return id
}

// placedWith is the session whose worker the new session must be made on:
// the one it forks, or its parent; "" for a root session.
func (req *createRequest) placedWith() string {
	if req.forkOf != "" {
		return req.forkOf
	}
	return req.parentID()
}

// patchBody is what a v1 PATCH must set after a v2 create, which takes only
// id, agent, model and location; nil when there is nothing to set.
func (req *createRequest) patchBody() []byte {
	patch := map[string]json.RawMessage{}
	for _, name := range []string{"title", "metadata", "permission"} {
		if v, ok := req.body[name]; ok {
			patch[name] = v
		}
	}
	if len(patch) == 0 {
		return nil
	}
	raw, _ := json.Marshal(patch)
	return raw
}

// parseCreate validates a create body. It returns nil without an id, and
// answers 400 itself for a bad body or id, so the upstream never sees those.
func (h *Handler) parseCreate(w http.ResponseWriter, r *http.Request, raw []byte) (*createRequest, bool) {
	body, id, ok := h.decodeCreate(w, raw)
	if body == nil || !ok {
		return nil, ok
	}
	if meta, ok := body["metadata"]; ok {
		var m map[string]json.RawMessage
		if json.Unmarshal(meta, &m) != nil || m == nil {
			apierror.BadRequest(w, "metadata must be a JSON object", map[string]any{"field": "metadata"})
			return nil, false
		}
	}
	location := requestLocation(r)
	return &createRequest{id: id, body: body, directory: location["directory"], fields: idmap.NewFields(body, location)}, true
}

// decodeCreate reads a create body of either route. It returns a nil body
// for a create without an id (or without a body), and answers 400 itself,
// returning false, for a body that is not a JSON object or a bad id. The
// body it returns has no "id".
func (h *Handler) decodeCreate(w http.ResponseWriter, raw []byte) (map[string]json.RawMessage, string, bool) {
	if len(raw) == 0 {
		return nil, "", true
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil || body == nil {
		apierror.BadRequest(w, "request body must be a JSON object", nil)
		return nil, "", false
	}
	id, present, invalid := idmap.CreateID(body)
	if !present {
		return nil, "", true
	}
	if invalid != nil {
		h.count(sessionMetrics.invalidIDs)
		apierror.BadRequest(w, invalid.Error(), map[string]any{"field": "id", "rule": invalid.Rule})
		return nil, "", false
	}
	delete(body, "id")
	return body, id, true
}

// requestLocation is where a create puts its session: the query's directory
// and workspace, or opencode's x-opencode-directory header.
func requestLocation(r *http.Request) map[string]string {
	query := r.URL.Query()
	location := map[string]string{"directory": query.Get("directory"), "workspace": query.Get("workspace")}
	if location["directory"] == "" {
		location["directory"] = r.Header.Get("X-Opencode-Directory")
	}
	return location
}

// parseCreateV2 validates a v2 create body ({id, agent, model, location}) and
// translates it to the v1 form, so that both routes share the duplicate
// policy: a v1 and a v2 create of one id with the same agent, model and
// directory match.
func (h *Handler) parseCreateV2(w http.ResponseWriter, r *http.Request, raw []byte) (*createRequest, bool) {
	body, id, ok := h.decodeCreate(w, raw)
	if body == nil || !ok {
		return nil, ok
	}
	var location struct {
		Directory string `json:"directory"`
	}
	if raw, ok := body["location"]; ok && json.Unmarshal(raw, &location) != nil {
		apierror.BadRequest(w, "location must be an object", map[string]any{"field": "location"})
		return nil, false
	}
	v1 := map[string]json.RawMessage{}
	for _, name := range []string{"agent", "model"} {
		if v, ok := body[name]; ok {
			v1[name] = v
		}
	}
	if location.Directory != "" {
		r.URL.RawQuery = "directory=" + url.QueryEscape(location.Directory)
	}
	return &createRequest{id: id, body: v1, directory: location.Directory, v2: true,
		fields: idmap.NewFields(v1, map[string]string{"directory": location.Directory})}, true
}
