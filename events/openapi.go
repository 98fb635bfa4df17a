package events

import (
	"time"

	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/internal/openapi"
)

// Augment declares on the event streams of an OpenAPI document how a
// client resumes (the Last-Event-ID header, the lastEventID query
// parameter), the resync event it may get, and the 429 of the limits.
func (e *Config) Augment(schemas, paths map[string]any) {
	if e == nil || e.Off {
		return
	}
	resync := map[string]any{
		"type": "object", "required": []any{"type", "properties"},
		"description": "Sent where this client has missed events: read the state you follow again (session status and messages). " +
			"See docs/events.md.",
		"properties": map[string]any{
			"type": map[string]any{"type": "string", "enum": []any{ResyncEventType}},
			"properties": map[string]any{"type": "object", "required": []any{"reason", "message"}, "properties": map[string]any{
				"reason": map[string]any{"type": "string", "enum": []any{
					string(eventlog.GapExpired), string(eventlog.GapUnknown), string(eventlog.GapOverrun), string(eventlog.GapUpstream)}},
				"message":     map[string]any{"type": "string"},
				"lastEventID": map[string]any{"type": "string", "description": "the Last-Event-ID the client resumed from"},
				"worker":      map[string]any{"type": "string", "description": "the worker whose stream broke off"},
			}},
		},
	}
	schemas["SessionIdsResyncEvent"] = resync
	schemas["SessionIdsGlobalResyncEvent"] = map[string]any{
		"type": "object", "required": []any{"payload"},
		"properties": map[string]any{"payload": map[string]any{"$ref": "#/components/schemas/SessionIdsResyncEvent"}},
	}
	schemas["SessionIdsMovedEvent"] = map[string]any{
		"type": "object", "required": []any{"type", "properties"},
		"description": "Sent when a session changed workers (moved, or its worker drained): it lives on with its history; " +
			"no session.deleted is sent for the copy it left. See docs/fleet.md.",
		"properties": map[string]any{
			"type": map[string]any{"type": "string", "enum": []any{MovedEventType}},
			"properties": map[string]any{"type": "object", "required": []any{"sessionID", "from", "to"}, "properties": map[string]any{
				"sessionID": map[string]any{"type": "string"},
				"from":      map[string]any{"type": "string", "description": "the worker it left"},
				"to":        map[string]any{"type": "string", "description": "the worker that holds it now"},
			}},
		},
	}
	schemas["SessionIdsGlobalMovedEvent"] = map[string]any{
		"type": "object", "required": []any{"payload"},
		"properties": map[string]any{"payload": map[string]any{"$ref": "#/components/schemas/SessionIdsMovedEvent"}},
	}
	schemas["TooManyStreamsError"] = map[string]any{
		"type": "object", "required": []any{"name", "data"},
		"properties": map[string]any{
			"name": map[string]any{"type": "string", "enum": []any{"TooManyStreamsError"}},
			"data": map[string]any{"type": "object", "required": []any{"message"}, "properties": map[string]any{
				"message": map[string]any{"type": "string"},
			}},
		},
	}
	tooMany := func() map[string]any {
		r := openapi.JSONResponse("Too many event streams at once (events max_streams, max_clients, max_clients_per_ip): retry after Retry-After seconds. See docs/events.md.",
			map[string]any{"$ref": "#/components/schemas/TooManyStreamsError"})
		r["headers"] = map[string]any{"Retry-After": map[string]any{"description": "seconds to wait before retrying", "schema": map[string]any{"type": "integer"}}}
		return r
	}
	description := "Every event carries an SSE id. Reconnect with Last-Event-ID (or ?lastEventID=) to get every event " +
		"sent since that one that is still retained (up to " + time.Duration(e.RetainFor).String() +
		"), then the live stream; where that is not possible the first event is " + ResyncEventType + ". See docs/events.md."
	for path, refs := range map[string][2]string{
		"/event":        {"#/components/schemas/SessionIdsResyncEvent", "#/components/schemas/SessionIdsMovedEvent"},
		"/global/event": {"#/components/schemas/SessionIdsGlobalResyncEvent", "#/components/schemas/SessionIdsGlobalMovedEvent"},
	} {
		item, _ := paths[path].(map[string]any)
		op, _ := item["get"].(map[string]any)
		if op == nil {
			continue
		}
		params, _ := op["parameters"].([]any)
		op["parameters"] = append(params,
			map[string]any{"name": "Last-Event-ID", "in": "header", "required": false, "schema": map[string]any{"type": "string"},
				"description": "The id of the last event this client received: the stream resumes after it."},
			map[string]any{"name": "lastEventID", "in": "query", "required": false, "schema": map[string]any{"type": "string"},
				"description": "Last-Event-ID as a query parameter, for clients that cannot set headers."},
		)
		if old, _ := op["description"].(string); old != "" {
			op["description"] = old + " " + description
		} else {
			op["description"] = description
		}
		responses := openapi.Child(op, "responses")
		responses["429"] = tooMany()
		ok, _ := responses["200"].(map[string]any)
		if ok == nil {
			continue
		}
		content, _ := ok["content"].(map[string]any)
		media, _ := content["text/event-stream"].(map[string]any)
		if media == nil || media["schema"] == nil {
			continue
		}
		media["schema"] = map[string]any{"anyOf": []any{media["schema"], map[string]any{"$ref": refs[0]}, map[string]any{"$ref": refs[1]}}}
	}
}
