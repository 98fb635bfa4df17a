package relocation

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/sessionid/caddy-sessionid/move"
)

func TestAWorkersRefusalHasItsOwnStatusInTheAdminAPI(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		says   string
	}{
		{move.StatusError{Worker: "w:1", Op: "GET /session/ses_a", Status: http.StatusNotFound}, http.StatusNotFound, "404"},
		{move.StatusError{Worker: "w:2", Op: "POST /sync/replay", Status: http.StatusNotFound}, http.StatusBadGateway, "404"},
		{move.StatusError{Worker: "w:1", Op: "GET /session/ses_a", Status: http.StatusUnauthorized}, http.StatusBadGateway, "upstream_authorization"},
		{fmt.Errorf("wait: %w", move.ErrBusy), http.StatusConflict, "busy"},
		{fmt.Errorf("check: %w", move.ErrCannotMove), http.StatusNotImplemented, "cannot move"},
	} {
		var got caddy.APIError
		if !errors.As(apiError(workerError(c.err, "w:1")), &got) || got.HTTPStatus != c.status || !strings.Contains(got.Err.Error(), c.says) {
			t.Errorf("%v: got %+v, want %d saying %q", c.err, got, c.status, c.says)
		}
	}
}
