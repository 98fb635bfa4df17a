package nativeserver

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
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

// Errors use opencode's v1 error shape, like the Caddy module (package apierror).
var (
	badRequest = apierror.BadRequest
	conflict   = apierror.Conflict
	notFound   = apierror.NotFound
)

func serverError(w http.ResponseWriter, err error) {
	apierror.Write(w, http.StatusInternalServerError, "UnknownError", err.Error(), nil)
}
