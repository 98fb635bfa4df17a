package caddymodule

import (
	"bytes"
	"context"
	"regexp"
	"time"

	"go.uber.org/zap"
)

// movedWindow is how long after a move the old worker's deletion of its
// copy may still arrive on an event stream.
const movedWindow = 2 * time.Minute

// deletedSession finds the session of a session.deleted event.
// opencode sends it as "session.deleted" on /event and /global/event, and as
// the sync event "session.deleted.1" on /global/event; the type comes first.
var deletedSession = regexp.MustCompile(`"type":"session\.deleted(?:\.[0-9]+)?".*?"sessionID":"(ses_[A-Za-z0-9_-]+)"`)

// movedAway reports whether an event is a moved session's deletion on the
// worker it left (relocation deletes that copy): clients must not see it,
// the session lives on. One storage read per session.deleted event.
func (h *Handler) movedAway(ctx context.Context, ev []byte) bool {
	if !bytes.Contains(ev, []byte(`"type":"session.deleted`)) {
		return false
	}
	m := deletedSession.FindSubmatch(ev)
	if m == nil {
		return false
	}
	moved, err := h.index.Store.LoadMoved(ctx, string(m[1]))
	return err == nil && time.Since(moved.At) < movedWindow
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
