package caddymodule

import (
	"bytes"
	"context"
	"regexp"
	"time"

	"go.uber.org/zap"
)

// followWait bounds how long an event stream waits for another instance to
// store the mapping of a session whose creation it is announcing.
const followWait = 3 * time.Second

// createdWithClientID finds, in a session.created event (or the sync event
// that carries it on /global/event), the session's real id and the client
// id its metadata names.
var createdWithClientID = regexp.MustCompile(`"sessionID":"(ses_[A-Za-z0-9_-]+)".*"clientSessionID":"(ses_[A-Za-z0-9_-]+)"`)

// followCreate makes sure the mapping of a session this event announces is
// known here before the event is rewritten. On one Caddy it always is (a
// lookup waits for the create in flight); with several sharing storage, the
// event can arrive while another instance is still storing the mapping, and
// the new real id would otherwise pass unrewritten and be remembered as
// unmapped for negative_ttl.
func (h *Handler) followCreate(ctx context.Context, ev []byte) {
	if !bytes.Contains(ev, []byte(`"type":"session.created`)) || !bytes.Contains(ev, []byte(`"clientSessionID"`)) {
		return
	}
	m := createdWithClientID.FindSubmatch(ev)
	if m == nil {
		return
	}
	// Followed even when the real id is known here already: a "not mapped"
	// this instance cached for the client id (a request that came too
	// early) goes too. A create is one storage read.
	realID, clientID := string(m[1]), string(m[2])
	if _, err := h.index.Follow(ctx, clientID, realID, followWait); err != nil {
		h.logger.Warn("could not follow a create announced on an event stream", zap.String("client_id", clientID), zap.String("real_id", realID), zap.Error(err))
	}
}
