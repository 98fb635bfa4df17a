package idempotency

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// parsePrompt reads and checks a keyed prompt: its key, its session id and
// its body, which must be a JSON object whose message id, if it names one,
// starts with "msg" as opencode requires. It answers 400 itself and returns
// false for anything else, before any lock is taken or record written: a
// request refused here saves nothing and may be retried as it is fixed.
func (p *Prompts) parsePrompt(w http.ResponseWriter, r *http.Request, sessionID string, route Route) (*keyedRequest, bool) {
	key, _, err := idmap.ParseKey(r.Header.Values(KeyHeader))
	var invalidKey *idmap.InvalidKeyError
	if errors.As(err, &invalidKey) {
		apierror.BadRequest(w, err.Error(), map[string]any{"kind": "Header", "field": KeyHeader, "rule": invalidKey.Rule})
		return nil, false
	}
	var invalidID *idmap.InvalidIDError
	if err := idmap.Validate(sessionID); errors.As(err, &invalidID) {
		apierror.BadRequest(w, err.Error()+"; an Idempotency-Key applies only to well-formed session ids",
			map[string]any{"kind": "Path", "field": "sessionID", "rule": invalidID.Rule})
		return nil, false
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		if body, err = upstream.ReadBody(r, p.maxBody); err != nil {
			upstream.BodyRefused(w, err, p.maxBody)
			return nil, false
		}
	}
	if err := p.ids.CheckIDs([]byte(r.URL.RawQuery), body); err != nil {
		upstream.BodyRefused(w, err, p.maxBody)
		return nil, false
	}
	print, err := idmap.NewFingerprint(route.name, r.URL.RawQuery, body)
	if err != nil {
		apierror.BadRequest(w, err.Error(), nil)
		return nil, false
	}
	caller, _ := access.CallerOf(r)
	req := &keyedRequest{sessionID: sessionID, caller: caller.ID, key: key, route: route, body: body, print: print}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(body, &fields)
	if raw, ok := fields[route.idField]; ok {
		if json.Unmarshal(raw, &req.messageID) != nil || !strings.HasPrefix(req.messageID, "msg") {
			apierror.BadRequest(w, route.idField+" must be a string starting with \"msg\"", map[string]any{"field": route.idField})
			return nil, false
		}
	}
	return req, true
}

// inProgress answers 409 for a key whose first request has not finished.
func inProgress(w http.ResponseWriter, req *keyedRequest, message string) {
	w.Header().Set("Retry-After", "1")
	apierror.Write(w, http.StatusConflict, "ConflictError", message, map[string]any{"sessionID": req.sessionID, "idempotencyKey": req.key})
}

// keyMismatch answers 422 for a key reused with another request, naming
// what differs ("route", "query" or "body.<field>").
func keyMismatch(w http.ResponseWriter, req *keyedRequest, differ []string) {
	apierror.Write(w, http.StatusUnprocessableEntity, "IdempotencyKeyMismatchError",
		fmt.Sprintf("Idempotency-Key %q was used on session %s for a different request (%s differ)", req.key, req.sessionID, strings.Join(differ, ", ")),
		map[string]any{"sessionID": req.sessionID, "idempotencyKey": req.key, "fields": differ})
}
