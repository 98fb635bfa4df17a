package caddymodule

import (
	"bytes"
	"context"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/events"
)

// movedWindow is how long after a move the old worker's deletion of its
// copy may still arrive on an event stream.
const movedWindow = 2 * time.Minute

// deletedSession finds the session of a session.deleted event.
// opencode sends it as "session.deleted" on /event and /global/event, and as
// the sync event "session.deleted.1" on /global/event; the type comes first.
var deletedSession = regexp.MustCompile(`"type":"session\.deleted(?:\.[0-9]+)?".*?"sessionID":"(ses_[A-Za-z0-9_-]+)"`)

// movedAway recognises a moved session's deletion on the worker it left
// (relocation deletes that copy): clients must not see it, the session
// lives on. It returns what clients get instead: the session_ids.moved
// event for opencode's session.deleted, nothing for its sync twin
// session.deleted.1. Every Caddy whose streams follow the old worker sees
// the deletion, and so tells its clients. One storage read per
// session.deleted event.
func (h *Handler) movedAway(ctx context.Context, ev []byte) (instead []byte, moved bool) {
	if !bytes.Contains(ev, []byte(`"type":"session.deleted`)) {
		return nil, false
	}
	m := deletedSession.FindSubmatch(ev)
	if m == nil {
		return nil, false
	}
	realID := string(m[1])
	record, err := h.index.Store.LoadMoved(ctx, realID)
	if err != nil || time.Since(record.At) >= movedWindow {
		return nil, false
	}
	if record.Undone || bytes.Contains(ev, []byte(`"type":"session.deleted.`)) {
		return nil, true
	}
	return events.MovedEvent(realID, record.From, record.To, bytes.Contains(ev, []byte(`"payload":`))), true
}

// avoidWorker reports whether new sessions must not be placed on a worker:
// it is being drained (upstream.Route.Avoid).
func (h *Handler) avoidWorker(worker string) bool { return h.moves.Draining(worker) }

// forgetMove makes the deletion of a session that was moved its own again:
// a client deletes it, and its session.deleted must reach clients.
func (h *Handler) forgetMove(ctx context.Context, realID string) {
	if err := h.index.Store.RemoveMoved(ctx, realID); err != nil {
		h.logger.Warn("could not forget the move of a session being deleted", zap.String("real_id", realID), zap.Error(err))
	}
}
