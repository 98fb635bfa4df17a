package caddymodule

import (
	"context"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// sweepInterval is how often expired prompt records are deleted.
const sweepInterval = time.Hour

// sweepers keeps one sweeper per index (namespace and storage) across
// config reloads.
var sweepers = caddy.NewUsagePool()

type sweeper struct{ stop context.CancelFunc }

func (s sweeper) Destruct() error { s.stop(); return nil }

// startSweeper makes sure the records of this handler's namespace are swept:
// a key that is never retried leaves a record, and storage must not grow
// without bound. Every instance sharing a storage sweeps; deleting a record
// twice is harmless.
func (h *Handler) startSweeper() {
	store, log := h.index.Store, h.logger
	_, _, _ = sweepers.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		ctx, stop := context.WithCancel(context.Background())
		go sweep(ctx, store, log)
		return sweeper{stop: stop}, nil
	})
	h.sweeperKey = h.poolKey
}

func sweep(ctx context.Context, store *idmap.Store, log *zap.Logger) {
	ticker := time.NewTicker(sweepInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		n, err := store.SweepPrompts(ctx, time.Now())
		if err != nil && ctx.Err() == nil {
			log.Warn("sweeping expired prompt records failed", zap.Error(err))
		}
		if n > 0 {
			log.Info("swept expired prompt records", zap.Int("deleted", n))
		}
	}
}

// stopSweeper releases this handler's share of its sweeper.
func (h *Handler) stopSweeper() {
	if h.sweeperKey != "" {
		_, _ = sweepers.Delete(h.sweeperKey)
	}
}

// forgetPrompts deletes the prompt records of a deleted session. Records
// also carry when their session was created, so one left behind (this
// failed, or the session was deleted elsewhere) is never replayed on a new
// session of the same id; this keeps storage from holding them until expiry.
func (h *Handler) forgetPrompts(ctx context.Context, sessionID string) {
	if err := h.index.Store.RemovePrompts(ctx, sessionID); err != nil {
		h.logger.Warn("could not remove the prompt records of a deleted session", zap.String("session_id", sessionID), zap.Error(err))
	}
}
