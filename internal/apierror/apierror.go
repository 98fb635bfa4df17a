// Package apierror writes errors in the shape of OpenCode's v1 routes,
// {"name": ..., "data": {"message": ..., ...}} (its NotFoundError and
// BadRequestError), so that clients parse the Caddy module's and the native
// server's errors like opencode's own.
package apierror

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Write answers with status and an error named name.
func Write(w http.ResponseWriter, status int, name, message string, extra map[string]any) {
	data := map[string]any{"message": message}
	for k, v := range extra {
		data[k] = v
	}
	body, _ := json.Marshal(map[string]any{"name": name, "data": data})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Encoding")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// BadRequest answers 400 for a bad request body; extra names the field and rule.
func BadRequest(w http.ResponseWriter, message string, extra map[string]any) {
	data := map[string]any{"kind": "Body"}
	for k, v := range extra {
		data[k] = v
	}
	Write(w, http.StatusBadRequest, "BadRequest", message, data)
}

// Conflict answers 409 for a session id that exists; fields, if any, are the
// create fields that differ from the existing session's.
func Conflict(w http.ResponseWriter, id, message string, fields []string) {
	extra := map[string]any{"sessionID": id}
	if fields != nil {
		extra["fields"] = fields
	}
	Write(w, http.StatusConflict, "ConflictError", message, extra)
}

// NotFound answers 404 for a session that does not exist, in opencode's words.
func NotFound(w http.ResponseWriter, id string) {
	Write(w, http.StatusNotFound, "NotFoundError", "Session not found: "+id, nil)
}

// Upstream answers for an upstream that could not be asked, or whose answer
// could not be used, without pretending anything happened.
func Upstream(w http.ResponseWriter, status int, message string) {
	Write(w, status, "UpstreamError", message, nil)
}

// Storage answers 503 for a storage (Caddy's, holding the mappings and
// records) that could not be read or written.
func Storage(w http.ResponseWriter, message string) {
	Write(w, http.StatusServiceUnavailable, "StorageError", message, nil)
}
