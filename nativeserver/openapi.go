package nativeserver

import (
	"fmt"
	"net/http"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// IDPattern is the id grammar as a regular expression, for the OpenAPI spec.
var IDPattern = fmt.Sprintf("^ses_[A-Za-z0-9_-]{1,%d}$", idmap.MaxSuffixLen)

type obj = map[string]any

func ref(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }

func jsonContent(schema obj) obj { return obj{"application/json": obj{"schema": schema}} }

func response(description string, schema obj) obj {
	if schema == nil {
		return obj{"description": description}
	}
	return obj{"description": description, "content": jsonContent(schema)}
}

var (
	sessionIDParam = obj{"name": "sessionID", "in": "path", "required": true, "schema": obj{"type": "string"}}
	directoryParam = obj{"name": "directory", "in": "query", "schema": obj{"type": "string"}}
	workspaceParam = obj{"name": "workspace", "in": "query", "schema": obj{"type": "string"}}
	notFoundResp   = response("Session not found", ref("NotFoundError"))
	badRequestResp = response("Bad request", ref("BadRequestError"))
)

func operation(id, summary string, params []obj, responses obj) obj {
	op := obj{"operationId": id, "summary": summary, "responses": responses}
	if params != nil {
		op["parameters"] = params
	}
	return op
}

func withBody(op obj, schema obj) obj {
	op["requestBody"] = obj{"required": true, "content": jsonContent(schema)}
	return op
}

// OpenAPI returns the OpenAPI 3.1 document of exactly what the server serves.
func OpenAPI() obj {
	item := []obj{sessionIDParam}
	createBody := obj{"type": "object", "properties": obj{
		"id": obj{"type": "string", "pattern": IDPattern, "maxLength": len(idmap.Prefix) + idmap.MaxSuffixLen,
			"description": "The session's id, chosen by the client. Omitted: the server generates one."},
		"parentID":    obj{"type": "string"},
		"title":       obj{"type": "string"},
		"agent":       obj{"type": "string"},
		"model":       ref("ModelRef"),
		"metadata":    obj{"type": "object"},
		"permission":  obj{"type": "array", "items": obj{}},
		"workspaceID": obj{"type": "string"},
	}}
	promptBody := obj{"type": "object", "required": []string{"parts"}, "properties": obj{
		"agent": obj{"type": "string"},
		"parts": obj{"type": "array", "items": obj{"type": "object", "required": []string{"type"},
			"properties": obj{"type": obj{"type": "string"}, "text": obj{"type": "string"}}}},
	}}
	return obj{
		"openapi": "3.1.0",
		"info": obj{"title": "Reference native session server", "version": Version,
			"description": "The OpenCode v1 session API with client-chosen session ids."},
		"paths": obj{
			"/global/health": obj{"get": operation("global.health", "Health", nil, obj{"200": response("Healthy",
				obj{"type": "object", "properties": obj{"healthy": obj{"type": "boolean"}, "version": obj{"type": "string"}}})})},
			"/doc": obj{"get": operation("doc", "This OpenAPI document", nil, obj{"200": response("OpenAPI 3.1", obj{"type": "object"})})},
			"/event": obj{"get": operation("event.subscribe", "Server-sent events", nil, obj{"200": obj{"description": "Event stream",
				"content": obj{"text/event-stream": obj{"schema": ref("Event")}}}})},
			"/session": obj{
				"get": operation("session.list", "List sessions", []obj{directoryParam, {"name": "roots", "in": "query", "schema": obj{"type": "string", "enum": []string{"true", "false"}}}},
					obj{"200": response("Sessions, most recently updated first", obj{"type": "array", "items": ref("Session")})}),
				"post": withBody(operation("session.create", "Create a session, under a chosen id if given", []obj{directoryParam, workspaceParam},
					obj{
						"200": obj{"description": "The created session, or the existing one when the create is a replay",
							"headers": obj{"Idempotent-Replayed": obj{"description": "true when an existing session is returned", "schema": obj{"type": "string", "enum": []string{"true"}}}},
							"content": jsonContent(ref("Session"))},
						"400": badRequestResp,
						"404": response("parentID names no session", ref("NotFoundError")),
						"409": response("The id exists and the duplicate policy refuses this create", ref("ConflictError")),
					}), createBody),
			},
			"/session/{sessionID}": obj{
				"get": operation("session.get", "Get a session", item, obj{"200": response("The session", ref("Session")), "404": notFoundResp}),
				"patch": withBody(operation("session.update", "Update title, metadata, permission or archive time", item,
					obj{"200": response("The session", ref("Session")), "400": badRequestResp, "404": notFoundResp}),
					obj{"type": "object", "properties": obj{"title": obj{"type": "string"}, "metadata": obj{"type": "object"},
						"permission": obj{"type": "array", "items": obj{}}, "time": obj{"type": "object", "properties": obj{"archived": obj{"type": "number"}}}}}),
				"delete": operation("session.delete", "Delete a session and its children", item, obj{"200": response("Deleted", obj{"type": "boolean"}), "404": notFoundResp}),
			},
			"/session/{sessionID}/fork": obj{"post": withBody(operation("session.fork", "Fork a session, under a chosen id if given", append([]obj{sessionIDParam}, directoryParam, workspaceParam),
				obj{
					"200": obj{"description": "The fork, or the existing one when the fork is a replay",
						"headers": obj{"Idempotent-Replayed": obj{"description": "true when an existing session is returned", "schema": obj{"type": "string", "enum": []string{"true"}}}},
						"content": jsonContent(ref("Session"))},
					"400": badRequestResp,
					"404": notFoundResp,
					"409": response("The id exists and the duplicate policy refuses this fork", ref("ConflictError")),
				}), obj{"type": "object", "properties": obj{
				"id": obj{"type": "string", "pattern": IDPattern, "maxLength": len(idmap.Prefix) + idmap.MaxSuffixLen,
					"description": "The fork's id, chosen by the client. Omitted: the server generates one."},
				"messageID": obj{"type": "string", "pattern": "^msg", "description": "Copy the messages before this one; omitted, all of them."},
			}})},
			"/session/status": obj{"get": operation("session.status", "The sessions answering a prompt (idle ones are not listed)", nil,
				obj{"200": response("Status by session id", obj{"type": "object", "additionalProperties": obj{"type": "object"}})})},
			"/sync/history": obj{"post": withBody(operation("sync.history", "The events of every session after the positions given; all of those not listed", nil,
				obj{"200": response("Events", obj{"type": "array", "items": obj{"type": "object"}}), "400": badRequestResp}),
				obj{"type": "object", "additionalProperties": obj{"type": "integer"}})},
			"/sync/replay": obj{"post": withBody(operation("sync.replay", "Make or bring up to date the sessions of the events, under their ids", nil,
				obj{"200": response("Replayed", obj{"type": "object"}), "400": badRequestResp}),
				obj{"type": "object", "properties": obj{"directory": obj{"type": "string"}, "events": obj{"type": "array", "items": obj{"type": "object"}}}})},
			"/path": obj{"get": operation("path.get", "Where the server works", nil,
				obj{"200": response("Paths", obj{"type": "object", "properties": obj{"directory": obj{"type": "string"}, "worktree": obj{"type": "string"}}})})},
			"/project/current": obj{"get": operation("project.current", "The project of the server's directory", nil,
				obj{"200": response("Project", obj{"type": "object", "properties": obj{"id": obj{"type": "string"}}})})},
			"/session/{sessionID}/children": obj{"get": operation("session.children", "Child sessions", item,
				obj{"200": response("Children", obj{"type": "array", "items": ref("Session")}), "404": notFoundResp})},
			"/session/{sessionID}/message": obj{
				"get": operation("session.messages", "Messages with their parts", item,
					obj{"200": response("Messages", obj{"type": "array", "items": ref("Message")}), "404": notFoundResp}),
				"post": withBody(operation("session.prompt", "Prompt and wait for the reply", item,
					obj{"200": response("The assistant's message", ref("Message")), "400": badRequestResp, "404": notFoundResp}), promptBody),
			},
			"/session/{sessionID}/prompt_async": obj{"post": withBody(operation("session.prompt_async", "Prompt without waiting", item,
				obj{"204": response("Accepted; the reply follows on /event and in the messages", nil), "400": badRequestResp, "404": notFoundResp}), promptBody)},
		},
		"components": obj{"schemas": obj{
			"ModelRef": obj{"type": "object", "required": []string{"id", "providerID"},
				"properties": obj{"id": obj{"type": "string"}, "providerID": obj{"type": "string"}, "variant": obj{"type": "string"}}},
			"Session": obj{"type": "object", "required": []string{"id", "slug", "projectID", "directory", "title", "version", "time"}, "properties": obj{
				"id": obj{"type": "string"}, "slug": obj{"type": "string"}, "projectID": obj{"type": "string"},
				"workspaceID": obj{"type": "string"}, "directory": obj{"type": "string"}, "path": obj{"type": "string"},
				"parentID": obj{"type": "string"}, "title": obj{"type": "string"}, "agent": obj{"type": "string"},
				"model": ref("ModelRef"), "version": obj{"type": "string"}, "metadata": obj{"type": "object"},
				"permission": obj{"type": "array", "items": obj{}}, "cost": obj{"type": "number"}, "tokens": obj{"type": "object"},
				"time": obj{"type": "object", "required": []string{"created", "updated"}, "properties": obj{
					"created": obj{"type": "integer"}, "updated": obj{"type": "integer"}, "archived": obj{"type": "number"}}},
			}},
			"Message": obj{"type": "object", "required": []string{"info", "parts"}, "properties": obj{
				"info": obj{"type": "object", "required": []string{"id", "sessionID", "role", "time"}, "properties": obj{
					"id": obj{"type": "string"}, "sessionID": obj{"type": "string"}, "role": obj{"type": "string", "enum": []string{"user", "assistant"}},
					"parentID": obj{"type": "string"}, "agent": obj{"type": "string"}, "finish": obj{"type": "string"}, "time": obj{"type": "object"}}},
				"parts": obj{"type": "array", "items": obj{"type": "object", "properties": obj{
					"id": obj{"type": "string"}, "sessionID": obj{"type": "string"}, "messageID": obj{"type": "string"},
					"type": obj{"type": "string"}, "text": obj{"type": "string"}}}},
			}},
			"Event": obj{"type": "object", "required": []string{"id", "type", "properties"}, "properties": obj{
				"id": obj{"type": "string"}, "properties": obj{"type": "object"},
				"type": obj{"type": "string", "enum": []string{"server.connected", "session.created", "session.updated", "session.deleted",
					"message.updated", "message.part.updated", "session.status", "session.idle"}}}},
			"NotFoundError":   namedError("NotFoundError", nil),
			"BadRequestError": namedError("BadRequest", obj{"kind": obj{"type": "string"}, "field": obj{"type": "string"}, "rule": obj{"type": "string", "enum": []string{idmap.RuleType, idmap.RulePrefix, idmap.RuleLength, idmap.RuleCharset}}}),
			"ConflictError": namedError("ConflictError", obj{"sessionID": obj{"type": "string"},
				"fields": obj{"type": "array", "items": obj{"type": "string"}, "description": "The create fields that differ from the existing session's"}}),
		}},
	}
}

func namedError(name string, data obj) obj {
	props := obj{"message": obj{"type": "string"}}
	for k, v := range data {
		props[k] = v
	}
	return obj{"type": "object", "required": []string{"name", "data"}, "properties": obj{
		"name": obj{"type": "string", "enum": []string{name}},
		"data": obj{"type": "object", "required": []string{"message"}, "properties": props},
	}}
}

func (s *Server) serveDoc(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, OpenAPI()) }
