package idempotency

import (
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/openapi"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// keyedRoutes are the OpenAPI paths of the prompt routes the
// Idempotency-Key applies to.
var keyedRoutes = []string{
	"/session/{sessionID}/prompt_async",
	"/session/{sessionID}/message",
	"/session/{sessionID}/command",
	"/session/{sessionID}/shell",
	"/api/session/{sessionID}/prompt",
}

// Augment declares the Idempotency-Key header on the prompt
// routes of an OpenAPI document, the replay header on their successes, and
// their 409 and 422 answers.
func (c *Config) Augment(schemas, paths map[string]any) {
	if c == nil || c.Off {
		return
	}
	schemas["IdempotencyKeyMismatchError"] = map[string]any{
		"type": "object", "required": []any{"name", "data"},
		"properties": map[string]any{
			"name": map[string]any{"type": "string", "enum": []any{"IdempotencyKeyMismatchError"}},
			"data": map[string]any{"type": "object", "required": []any{"message", "sessionID", "idempotencyKey", "fields"}, "properties": map[string]any{
				"message":        map[string]any{"type": "string"},
				"sessionID":      map[string]any{"type": "string"},
				"idempotencyKey": map[string]any{"type": "string"},
				"fields": map[string]any{"type": "array", "items": map[string]any{"type": "string"},
					"description": `What differs from the request that first used the key: "route", "query" or "body.<field>".`},
			}},
		},
	}
	schemas["IdempotencyInProgressError"] = map[string]any{
		"type": "object", "required": []any{"name", "data"},
		"properties": map[string]any{
			"name": map[string]any{"type": "string", "enum": []any{"ConflictError"}},
			"data": map[string]any{"type": "object", "required": []any{"message"}, "properties": map[string]any{
				"message":        map[string]any{"type": "string"},
				"sessionID":      map[string]any{"type": "string"},
				"idempotencyKey": map[string]any{"type": "string"},
			}},
		},
	}
	header := map[string]any{
		"name": KeyHeader, "in": "header", "required": false,
		"description": "Makes the prompt run once: a retry with the same key on the same session gets the first answer back " +
			"(Idempotent-Replayed: true) and the upstream sees nothing. Keys expire after " + time.Duration(c.TTL).String() + ". See docs/idempotency.md.",
		"schema": map[string]any{"type": "string", "minLength": 1, "maxLength": idmap.MaxKeyLen, "pattern": `^"?[!#-\[\]-~]+"?$`},
	}
	for _, route := range keyedRoutes {
		item, _ := paths[route].(map[string]any)
		op, _ := item["post"].(map[string]any)
		if op == nil {
			continue
		}
		params, _ := op["parameters"].([]any)
		op["parameters"] = append(params, header)
		responses := openapi.Child(op, "responses")
		for status, resp := range responses {
			if ok, _ := resp.(map[string]any); ok != nil && len(status) == 3 && status[0] == '2' {
				openapi.Child(ok, "headers")[upstream.ReplayHeader] = map[string]any{
					"description": "true when the answer is the recorded answer of an earlier request with the same Idempotency-Key",
					"schema":      map[string]any{"type": "string", "enum": []any{"true"}},
				}
			}
		}
		inProgress := openapi.JSONResponse("A request with the same Idempotency-Key is still in progress (retry after Retry-After seconds)",
			map[string]any{"$ref": "#/components/schemas/IdempotencyInProgressError"})
		if old, ok := responses["409"].(map[string]any); ok {
			if content, ok := old["content"].(map[string]any); ok {
				if media, ok := content["application/json"].(map[string]any); ok && media["schema"] != nil {
					inProgress = openapi.JSONResponse("The session is busy, or a request with the same Idempotency-Key is still in progress",
						map[string]any{"anyOf": []any{media["schema"], map[string]any{"$ref": "#/components/schemas/IdempotencyInProgressError"}}})
				}
			}
		}
		responses["409"] = inProgress
		responses["422"] = openapi.JSONResponse("The Idempotency-Key was used for a different request",
			map[string]any{"$ref": "#/components/schemas/IdempotencyKeyMismatchError"})
	}
}
