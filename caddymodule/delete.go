package caddymodule

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// serveDelete deletes a mapped session upstream and then its mapping, under
// the id's lock, so the id can be created again, leaving a tombstone so that
// only an explicit create does (create_missing does not). A session the upstream no
// longer has loses its mapping too. Unmapped ids pass through.
func (h *Handler) serveDelete(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	ctx := r.Context()
	start, end, _ := sessionSegment(r.URL.Path)
	id := r.URL.Path[start:end]
	if idmap.Validate(id) != nil {
		return h.proxy(w, r, next, nil)
	}
	unlock, err := h.index.Lock(ctx, id)
	if err != nil {
		h.logger.Error("could not lock session id "+id, zap.Error(err))
		apierror.Storage(w, "could not lock session id "+id)
		return nil
	}
	defer unlock()
	m, err := h.index.Store.Load(ctx, id)
	if errors.Is(err, idmap.ErrNotFound) {
		h.forgetMove(ctx, id)
		return h.proxy(w, r, next, nil)
	}
	if err != nil {
		h.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return nil
	}
	if !h.ids.Request(w, r, nil) {
		return nil
	}
	h.forgetMove(ctx, m.RealID)
	answer, err := upstream.Ask(r, next, http.MethodDelete, r.URL.Path, r.URL.RawQuery, nil)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not delete the session: "+err.Error())
		return nil
	}
	if answer.OK() || answer.Status == http.StatusNotFound {
		// The tombstone first: a crash between the two leaves the mapping,
		// which the retried delete removes, never an id create_missing
		// would bring back.
		if err := h.index.Store.SaveTombstone(ctx, idmap.Tombstone{ClientID: id, RealID: m.RealID, Deleted: time.Now().UTC()}); err != nil {
			h.logger.Error("session deleted upstream but its tombstone could not be stored", zap.String("session_id", id), zap.Error(err))
			apierror.Storage(w, "the session was deleted but its id mapping could not be removed; retry the delete")
			return nil
		}
		if err := h.index.Remove(ctx, m); err != nil {
			h.logger.Error("session deleted upstream but its mapping could not be removed", zap.String("session_id", id), zap.Error(err))
			apierror.Storage(w, "the session was deleted but its id mapping could not be removed; retry the delete")
			return nil
		}
		h.prompts.Forget(ctx, id)
		if answer.Status == http.StatusNotFound && h.relocator.Journal != nil {
			// Its worker lost it (goneAware leaves deletes alone): its
			// journal goes with its mapping.
			if err := h.relocator.Journal.Remove(ctx, m.RealID); err != nil {
				h.logger.Warn("could not remove the journal of a deleted session", zap.String("real_id", m.RealID), zap.Error(err))
			}
		}
		if err := h.index.Store.RemoveForked(ctx, m.RealID); err != nil {
			h.logger.Warn("could not remove the record of a deleted fork", zap.String("real_id", m.RealID), zap.Error(err))
		}
		h.logger.Info("session deleted", zap.String("session_id", id), zap.String("real_id", m.RealID))
	}
	h.ids.Relay(w, r, answer, false)
	return nil
}
