package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/openapi"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// idPattern is the id grammar as a regular expression.
var idPattern = fmt.Sprintf("^ses_[A-Za-z0-9_-]{1,%d}$", idmap.MaxSuffixLen)

// createMissingRoutes are the routes on which create_missing creates an
// unknown id first, as path → methods.
var createMissingRoutes = map[string][]string{
	"/session/{sessionID}":              {"get"},
	"/session/{sessionID}/message":      {"get", "post"},
	"/session/{sessionID}/prompt_async": {"post"},
	"/session/{sessionID}/command":      {"post"},
	"/session/{sessionID}/shell":        {"post"},
}

// serveDoc answers GET /doc with the upstream's OpenAPI document augmented by
// what the handler adds: "id" on the create bodies, the 400 and 409 answers
// and their error schemas, the replay header, and create_missing where it is
// enabled. A document the handler cannot read passes through untouched.
func (h *Handler) serveDoc(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	answer, err := upstream.Ask(r, next, http.MethodGet, r.URL.Path, r.URL.RawQuery, nil)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(answer.Body.Bytes()))
	dec.UseNumber()
	var doc map[string]any
	if !answer.OK() || dec.Decode(&doc) != nil || doc["paths"] == nil {
		h.ids.Relay(w, r, answer, false)
		return nil
	}
	h.augment(doc)
	body, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(body)
	return err
}

func (h *Handler) augment(doc map[string]any) {
	components := openapi.Child(doc, "components")
	schemas := openapi.Child(components, "schemas")
	schemas["SessionIDBadRequestError"] = map[string]any{
		"type": "object", "required": []any{"name", "data"},
		"properties": map[string]any{
			"name": map[string]any{"type": "string", "enum": []any{"BadRequest"}},
			"data": map[string]any{"type": "object", "required": []any{"message"}, "properties": map[string]any{
				"message": map[string]any{"type": "string"},
				"kind":    map[string]any{"type": "string"},
				"field":   map[string]any{"type": "string"},
				"rule":    map[string]any{"type": "string", "enum": []any{idmap.RuleType, idmap.RulePrefix, idmap.RuleLength, idmap.RuleCharset}},
			}},
		},
	}
	schemas["SessionIDConflictError"] = map[string]any{
		"type": "object", "required": []any{"name", "data"},
		"properties": map[string]any{
			"name": map[string]any{"type": "string", "enum": []any{"ConflictError"}},
			"data": map[string]any{"type": "object", "required": []any{"message", "sessionID"}, "properties": map[string]any{
				"message":   map[string]any{"type": "string"},
				"sessionID": map[string]any{"type": "string"},
				"fields": map[string]any{"type": "array", "items": map[string]any{"type": "string"},
					"description": "The create fields that differ from those the session was created with (duplicates match)."},
			}},
		},
	}
	paths := openapi.Child(doc, "paths")
	h.Idempotency.Augment(schemas, paths)
	h.Events.Augment(schemas, paths)
	routes := []string{"/session", "/api/session"}
	if h.Mode == ModeMapping {
		// In direct mode a fork takes an id only where the upstream's own
		// fork does, and its document says so itself.
		routes = append(routes, "/session/{sessionID}/fork")
	}
	for _, route := range routes {
		item, _ := paths[route].(map[string]any)
		post, _ := item["post"].(map[string]any)
		if post == nil {
			continue
		}
		what := "session"
		if route != "/session" && route != "/api/session" {
			what = "fork"
		}
		if props := bodyProperties(post, schemas); props != nil {
			props["id"] = map[string]any{
				"type": "string", "pattern": idPattern, "maxLength": len(idmap.Prefix) + idmap.MaxSuffixLen,
				"description": fmt.Sprintf("The %s's id, chosen by the client (the session_ids proxy, mode %s). "+
					"A %s of an id that exists is answered by the duplicate policy %q.", what, h.Mode, strings.Replace(what, "session", "create", 1), h.duplicates),
			}
		}
		responses := openapi.Child(post, "responses")
		if ok, _ := responses["200"].(map[string]any); ok != nil {
			openapi.Child(ok, "headers")[ReplayHeader] = map[string]any{
				"description": "true when the create returned an existing session (a replay)",
				"schema":      map[string]any{"type": "string", "enum": []any{"true"}},
			}
		}
		bad := map[string]any{"$ref": "#/components/schemas/SessionIDBadRequestError"}
		if old, ok := responses["400"].(map[string]any); ok {
			if content, ok := old["content"].(map[string]any); ok {
				if media, ok := content["application/json"].(map[string]any); ok && media["schema"] != nil {
					bad = map[string]any{"anyOf": []any{media["schema"], bad}}
				}
			}
		}
		responses["400"] = openapi.JSONResponse("Invalid session id or body", bad)
		responses["409"] = openapi.JSONResponse("The id exists and the duplicate policy refuses this create, or the id is taken",
			map[string]any{"$ref": "#/components/schemas/SessionIDConflictError"})
	}
	if h.CreateMissing {
		for route, methods := range createMissingRoutes {
			item, _ := paths[route].(map[string]any)
			for _, method := range methods {
				op, _ := item[method].(map[string]any)
				if op == nil {
					continue
				}
				desc, _ := op["description"].(string)
				op["description"] = desc + "\n\nWith create_missing, a well-formed session id that does not exist yet is created first (with exactly-once semantics)."
				op["x-session-ids-create-missing"] = true
			}
		}
	}
}

// bodyProperties finds the JSON request body's object properties of an
// operation, following one $ref into components.
func bodyProperties(op map[string]any, schemas map[string]any) map[string]any {
	body, _ := op["requestBody"].(map[string]any)
	content, _ := body["content"].(map[string]any)
	media, _ := content["application/json"].(map[string]any)
	schema, _ := media["schema"].(map[string]any)
	if ref, ok := schema["$ref"].(string); ok {
		const prefix = "#/components/schemas/"
		if len(ref) > len(prefix) {
			schema, _ = schemas[ref[len(prefix):]].(map[string]any)
		}
	}
	if schema == nil {
		return nil
	}
	return openapi.Child(schema, "properties")
}
