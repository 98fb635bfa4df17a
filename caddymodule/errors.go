package caddymodule

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// writeError answers in the error shape of OpenCode's v1 routes,
// {"name": ..., "data": {"message": ..., ...}}, the shape of its NotFoundError
// and BadRequestError, so clients parse the handler's errors like the
// upstream's own.
func writeError(w http.ResponseWriter, status int, name, message string, extra map[string]any) {
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

// upstreamFailed answers for an upstream that could not be asked, or whose
// answer could not be used, without pretending anything happened.
func upstreamFailed(w http.ResponseWriter, status int, message string) {
	writeError(w, status, "UpstreamError", message, nil)
}

func storageFailed(w http.ResponseWriter, message string) {
	writeError(w, http.StatusServiceUnavailable, "StorageError", message, nil)
}
