package upstream

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// askError is a request of the module's own that failed; it keeps the
// proxy's status for FailureStatus and reads without Caddy's error ids.
type askError struct {
	op  string
	err error
}

func (e askError) Error() string { return e.op + ": " + Cause(e.err) }
func (e askError) Unwrap() error { return e.err }

// Cause is what went wrong, in words: a Caddy handler error without its
// request id and trace.
func Cause(err error) string {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		if he.Err != nil {
			return he.Err.Error()
		}
		return http.StatusText(he.StatusCode)
	}
	return err.Error()
}

// FailureStatus is the status to answer with when a request of the module's
// own failed: the proxy's (502, 503, 504), or 502.
func FailureStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 400 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}
