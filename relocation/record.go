package relocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// renewEvery is how often a mover renews its record: well within
// idmap.MoveRecordStale, after which the other Caddys stop holding.
const renewEvery = 2 * time.Second

// moveRecord is the storage record of a move this process makes
// (idmap.Move), renewed while the move lasts.
type moveRecord struct {
	idmap.Move
	announced time.Time
	// alone: no other Caddy follows the moves, so none must be waited for.
	alone bool

	rl        *Relocator
	mu        sync.Mutex // the record's writes: renewals and the switch
	stopRenew context.CancelFunc
	renewed   chan struct{}
	// saved is when the record was last written (unix nanoseconds): a mover
	// that has not renewed it for ownStale may have been given up by the
	// others, and must not go on.
	saved atomic.Int64
}

// ownStale is how old a mover lets its own record get before it stops:
// well before idmap.MoveRecordStale, when the others give it up.
const ownStale = idmap.MoveRecordStale - 3*time.Second

// ErrTakenOver: the lock of a move ran out while its mover stalled, and
// another move of the session started.
var ErrTakenOver = errors.New("the move was taken over by another")

// announce writes the record of a move: from now on every Caddy sharing
// the storage holds the requests for its sessions.
func (rl *Relocator) announce(ctx context.Context, realID, from, to string, tree []string) (*moveRecord, error) {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	r := &moveRecord{rl: rl, renewed: make(chan struct{})}
	r.Move = idmap.Move{RealID: realID, From: from, To: to, Token: hex.EncodeToString(token), Sessions: tree, Renewed: time.Now().UTC()}
	for _, id := range tree {
		clientID, mapped, err := rl.Index.ClientOf(ctx, id)
		if err != nil {
			return nil, err
		}
		if mapped {
			r.Clients = append(r.Clients, clientID)
		}
	}
	if previous, err := rl.Index.Store.LoadMove(ctx, realID); err == nil {
		if !previous.Stale(time.Now()) {
			// Its mover is alive (its lock ran out while it paused):
			// overwriting the record would let two moves run.
			return nil, Error{http.StatusConflict, fmt.Sprintf("session %s is being moved to %s by another Caddy", realID, previous.To), nil}
		}
		// Its mover crashed or stalled: this one takes over.
		rl.Logger.Warn("taking over a move whose mover is gone", zap.String("real_id", realID), zap.String("from", previous.From), zap.String("to", previous.To), zap.Time("renewed", previous.Renewed))
	}
	others, err := rl.Index.Store.OtherFollowers(ctx, instance)
	r.alone = err == nil && !others
	markOwn(r.Token, true)
	if err := rl.Index.Store.SaveMove(ctx, r.Move); err != nil {
		markOwn(r.Token, false)
		return nil, fmt.Errorf("record the move of %s: %w", realID, err)
	}
	r.announced = time.Now()
	r.saved.Store(r.announced.UnixNano())
	renewCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.stopRenew = stop
	go r.renew(renewCtx)
	return r, nil
}

// renew keeps the record alive while this process moves.
func (r *moveRecord) renew(ctx context.Context) {
	defer close(r.renewed)
	ticker := time.NewTicker(renewEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		r.mu.Lock()
		err := r.fence(ctx)
		if err == nil {
			r.Renewed = time.Now().UTC()
			if err = r.rl.Index.Store.SaveMove(ctx, r.Move); err == nil {
				r.saved.Store(time.Now().UnixNano())
			}
		}
		r.mu.Unlock()
		if errors.Is(err, ErrTakenOver) {
			return
		}
		if err != nil && ctx.Err() == nil {
			r.rl.Logger.Warn("could not renew a move's record", zap.String("real_id", r.RealID), zap.Error(err))
		}
	}
}

// fence returns ErrTakenOver when the stored record is not this move's any
// more. Where a switch is written, it is checked under the id's lock.
func (r *moveRecord) fence(ctx context.Context) error {
	if age := time.Since(time.Unix(0, r.saved.Load())); age > ownStale {
		// The others may have stopped holding: what they let through
		// since is on the old copy only.
		return Error{http.StatusConflict, fmt.Sprintf("session %s: its move's record was not renewed for %v; move it again", r.RealID, age.Round(time.Second)), ErrTakenOver}
	}
	stored, err := r.rl.Index.Store.LoadMove(ctx, r.RealID)
	switch {
	case errors.Is(err, idmap.ErrNotFound):
		return Error{http.StatusConflict, fmt.Sprintf("session %s: %v (its record is gone)", r.RealID, ErrTakenOver), ErrTakenOver}
	case err != nil:
		return err
	case stored.Token != r.Token:
		return Error{http.StatusConflict, fmt.Sprintf("session %s: %v, to %s", r.RealID, ErrTakenOver, stored.To), ErrTakenOver}
	}
	return nil
}

// switched records that the sessions are on the new worker: the other
// Caddys let their requests go there.
func (r *moveRecord) switched(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fence(ctx); err != nil {
		return
	}
	r.Switched, r.Renewed = true, time.Now().UTC()
	if err := r.rl.Index.Store.SaveMove(ctx, r.Move); err == nil {
		r.saved.Store(time.Now().UnixNano())
	} else {
		r.rl.Logger.Warn("could not record a move's switch; the other Caddys follow it once its record is gone", zap.String("real_id", r.RealID), zap.Error(err))
	}
}

// endRecord stops renewing and deletes the record, if it is still this
// move's.
func (rl *Relocator) endRecord(r *moveRecord) {
	r.stopRenew()
	<-r.renewed
	defer markOwn(r.Token, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r.fence(ctx) != nil {
		return
	}
	if err := rl.Index.Store.RemoveMove(ctx, r.RealID); err != nil {
		rl.Logger.Warn("could not delete a move's record; the other Caddys stop holding once it is stale", zap.String("real_id", r.RealID), zap.Error(err))
	}
}
