package caddymodule

import (
	"net/http"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
)

// The handler answers in opencode's v1 error shape (package apierror).
var (
	writeError = apierror.Write
	badRequest = apierror.BadRequest
	conflict   = apierror.Conflict
)

// upstreamFailed answers for an upstream that could not be asked, or whose
// answer could not be used, without pretending anything happened.
func upstreamFailed(w http.ResponseWriter, status int, message string) {
	writeError(w, status, "UpstreamError", message, nil)
}

func storageFailed(w http.ResponseWriter, message string) {
	writeError(w, http.StatusServiceUnavailable, "StorageError", message, nil)
}
