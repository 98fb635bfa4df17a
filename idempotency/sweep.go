package idempotency

import (
	"context"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/shared"
)

// sweepInterval is how often expired prompt records are deleted.
const sweepInterval = time.Hour

type sweeper struct{ stop context.CancelFunc }

func (s sweeper) Destruct() error { s.stop(); return nil }

// startSweeper makes sure the records of this handler's namespace are swept:
// a key that is never retried leaves a record, and storage must not grow
// without bound. Every instance sharing a storage sweeps; deleting a record
// twice is harmless.
// One sweeper per index (namespace and storage) is kept in shared.Pool,
// across config reloads.
func (p *Prompts) startSweeper(key string) {
	store, log := p.index.Store, p.logger
	key = "sweeper|" + key
	_, _, _ = shared.Pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		ctx, stop := context.WithCancel(context.Background())
		go sweep(ctx, store, log)
		return sweeper{stop: stop}, nil
	})
	p.sweeperKey = key
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
func (p *Prompts) stopSweeper() {
	if p.sweeperKey != "" {
		_, _ = shared.Pool.Delete(p.sweeperKey)
		p.sweeperKey = ""
	}
}

// Forget deletes the prompt records of a deleted session. Records
// also carry when their session was created, so one left behind (this
// failed, or the session was deleted elsewhere) is never replayed on a new
// session of the same id; this keeps storage from holding them until expiry.
func (p *Prompts) Forget(ctx context.Context, sessionID string) {
	if err := p.index.Store.RemovePrompts(ctx, sessionID); err != nil {
		p.logger.Warn("could not remove the prompt records of a deleted session", zap.String("session_id", sessionID), zap.Error(err))
	}
}
