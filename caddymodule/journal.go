package caddymodule

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/journal"
)

// journalKeeping is the journal of a handler's config: the keeper and the
// loop that tells it which workers the fleet has.
type journalKeeping struct {
	keeper *journal.Keeper
	stop   context.CancelFunc
	done   chan struct{}
}

// fleetWatch is how often the journal looks at which workers the fleet has.
const fleetWatch = time.Second

// startJournal starts keeping the journal, if it is on.
func (h *Handler) startJournal() error {
	if !h.Journal.On() {
		return nil
	}
	if h.storage == nil {
		return errors.New("journal: no storage to keep it in")
	}
	h.Journal.SetDefaults()
	k := &journal.Keeper{
		Store:    journal.NewStore(h.storage, h.Namespace, h.Journal.Limit),
		Workers:  h.relocator.Workers,
		Interval: time.Duration(h.Journal.Interval),
		Logger:   h.logger.Named("journal"),
		Own:      h.ownDeletion,
		Here:     h.recordedHere,
	}
	h.relocator.Journal = k.Store
	ctx, cancel := context.WithCancel(context.Background())
	h.journal = &journalKeeping{keeper: k, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.journal.done)
		ticker := time.NewTicker(fleetWatch)
		defer ticker.Stop()
		down := map[string]time.Time{} // workers failing their health checks, since
		rehomed := map[string]bool{}   // re-homed while down
		for tick := 0; ; tick++ {
			var dials []string
			for _, u := range h.fleet.Workers() {
				dials = append(dials, u.Dial)
				if u.Healthy() {
					delete(down, u.Dial)
					delete(rehomed, u.Dial)
					continue
				}
				if down[u.Dial].IsZero() {
					down[u.Dial] = time.Now()
				}
				if after := time.Duration(h.Journal.RehomeAfter); after > 0 && !rehomed[u.Dial] && time.Since(down[u.Dial]) >= after {
					// One re-home at a time, in this loop (stopped with the
					// config): tried again on the next tick while the
					// worker stays down, until every session is re-homed.
					h.logger.Warn("a worker failed its health checks for rehome_after: re-homing its sessions from their journals", zap.String("worker", u.Dial), zap.Duration("rehome_after", after))
					out, err := h.relocator.Rehome(ctx, u.Dial)
					switch {
					case err != nil:
						h.logger.Error("could not re-home a lost worker's sessions", zap.String("worker", u.Dial), zap.Error(err))
					case len(out.Failed) > 0:
						h.logger.Error("some sessions of a lost worker could not be re-homed; trying again", zap.String("worker", u.Dial), zap.Any("failed", out.Failed))
					default:
						rehomed[u.Dial] = true
					}
				}
			}
			k.Follow(dials)
			if tick%5 == 0 {
				h.relocator.SweepRehomed(ctx)
			}
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
	return nil
}

// stopJournal stops keeping the journal of this config.
func (h *Handler) stopJournal() {
	if h.journal == nil {
		return
	}
	h.journal.stop()
	<-h.journal.done
	h.journal.keeper.Close()
}

// ownDeletion reports whether a session's deletion on a worker is the
// session's own: not a move's old copy, and on the worker the index
// records for it (or none is recorded: a delete through the proxy removes
// the mapping first).
func (h *Handler) ownDeletion(ctx context.Context, realID, worker string) bool {
	if moved, err := h.index.Store.LoadMoved(ctx, realID); err == nil && time.Since(moved.At) < movedWindow {
		return false
	}
	return h.recordedHere(ctx, realID, worker)
}

// recordedHere reports whether the index has a session on a worker, or on
// none: the journal takes only that worker's events of it.
func (h *Handler) recordedHere(ctx context.Context, realID, worker string) bool {
	recorded := h.index.RecordedWorker(ctx, realID)
	return recorded == "" || recorded == worker
}
