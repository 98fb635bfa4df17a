package nativeserver

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/sessionid/caddy-sessionid/idmap"
)

var errSessionGone = errors.New("session was deleted")

func newMessageID() string { return idmap.NewID("msg", false) }
func newPartID() string    { return idmap.NewID("prt", false) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		status, raw = 500, []byte(`{"name":"UnknownError","data":{"message":"encode response"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(raw)
}

// writeError answers in opencode's v1 error shape, like the Caddy module.
func writeError(w http.ResponseWriter, status int, name, message string, extra map[string]any) {
	data := map[string]any{"message": message}
	for k, v := range extra {
		data[k] = v
	}
	writeJSON(w, status, map[string]any{"name": name, "data": data})
}

func badRequest(w http.ResponseWriter, message string, extra map[string]any) {
	if extra == nil {
		extra = map[string]any{}
	}
	extra["kind"] = "Body"
	writeError(w, http.StatusBadRequest, "BadRequest", message, extra)
}

func conflict(w http.ResponseWriter, id, message string, fields []string) {
	extra := map[string]any{"sessionID": id}
	if fields != nil {
		extra["fields"] = fields
	}
	writeError(w, http.StatusConflict, "ConflictError", message, extra)
}

func notFound(w http.ResponseWriter, id string) {
	writeError(w, http.StatusNotFound, "NotFoundError", "Session not found: "+id, nil)
}

func serverError(w http.ResponseWriter, err error) {
	writeError(w, http.StatusInternalServerError, "UnknownError", err.Error(), nil)
}
