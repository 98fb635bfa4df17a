package relocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
)

// Every Caddy sharing the storage follows the moves the others make: it
// reads the move records (idmap.Move) every followInterval, holds the
// requests for the sessions of a move under way as the mover does its own,
// and, once the move has switched or ended, drops what its cache knows of
// them and lets the requests go, to the new worker. A mover waits
// settleTime after writing its record before it copies, so that every Caddy
// holds by then, and the requests they had let through have reached the old
// worker; and settleTime after the switch before it deletes the old copy.
// Each Caddy also says it follows (idmap.Follower, every 2 s): a mover that
// finds no other Caddy there waits for no one.
const (
	followInterval = 250 * time.Millisecond
	settleTime     = 3 * followInterval
)

// follower is what this process follows of the other Caddys' moves, per
// namespace: it outlives config reloads, as the holds do.
type follower struct {
	held      map[string]followed // by the real id of the move's root
	refreshed map[string]bool     // tokens of switched moves already refreshed
	lastRead  time.Time
	lastSaid  time.Time // when this process last said it follows
}

// instance names this process among the Caddys that follow moves.
var instance = func() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

type followed struct {
	move    idmap.Move
	release func()
}

var (
	followMu  sync.Mutex // the followers; taken by follow
	followers = map[string]*follower{}
	loopMu    sync.Mutex // following; taken before registryMu
	following bool

	// own are the tokens of the moves this process makes: it holds their
	// sessions itself.
	ownMu sync.Mutex
	own   = map[string]bool{}
)

func markOwn(token string, on bool) {
	ownMu.Lock()
	defer ownMu.Unlock()
	if on {
		own[token] = true
	} else {
		delete(own, token)
	}
}

func isOwn(token string) bool {
	ownMu.Lock()
	defer ownMu.Unlock()
	return own[token]
}

// startFollowing runs the loop that follows every registered namespace, if
// it does not run; it ends when no relocator is registered.
func startFollowing() {
	loopMu.Lock()
	defer loopMu.Unlock()
	if following {
		return
	}
	following = true
	go func() {
		ticker := time.NewTicker(followInterval)
		defer ticker.Stop()
		for range ticker.C {
			if relocators := registered(); len(relocators) > 0 {
				for _, rl := range relocators {
					rl.follow()
				}
				continue
			}
			loopMu.Lock()
			// Register starts the loop again if it ran meanwhile.
			if len(registered()) == 0 {
				following = false
				loopMu.Unlock()
				return
			}
			loopMu.Unlock()
		}
	}()
}

// registered returns the relocator of every namespace.
func registered() []*Relocator {
	registryMu.Lock()
	defer registryMu.Unlock()
	relocators := make([]*Relocator, 0, len(registry))
	for ns := range registry {
		relocators = append(relocators, newest(ns))
	}
	return relocators
}

// unfollow lets go of what this process held for the other Caddys' moves
// in rl's namespace, which it no longer follows.
func unfollow(rl *Relocator) {
	followMu.Lock()
	defer followMu.Unlock()
	if f := followers[rl.Namespace]; f != nil {
		f.releaseAll(rl)
		delete(followers, rl.Namespace)
	}
}

// follow reads the move records of the namespace once and holds, or
// releases, this process's requests for their sessions. It also says, every
// idmap.FollowerEvery, that this process follows: a mover with no other
// Caddy following has no one to wait for.
func (rl *Relocator) follow() {
	followMu.Lock()
	defer followMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*followInterval) // within settleTime
	defer cancel()
	f := followers[rl.Namespace]
	if f == nil {
		f = &follower{held: map[string]followed{}, refreshed: map[string]bool{}}
		followers[rl.Namespace] = f
	}

	now := time.Now()
	if now.Sub(f.lastSaid) >= idmap.FollowerEvery {
		if err := rl.Index.Store.SaveFollower(ctx, idmap.Follower{Instance: instance, Seen: now.UTC()}); err != nil {
			rl.Logger.Debug("could not say this Caddy follows the moves", zap.Error(err))
		} else {
			f.lastSaid = now
		}
	}
	moves, err := rl.Index.Store.Moves(ctx)
	if err != nil {
		rl.Logger.Debug("could not read the moves under way", zap.Error(err))
		if now.Sub(f.lastRead) > idmap.MoveRecordStale {
			// The storage cannot say: holding longer would hold forever.
			f.releaseAll(rl)
		}
		return
	}
	f.lastRead = now
	state := moving.Of(rl.Namespace)
	seen := map[string]bool{}
	tokens := map[string]bool{}
	for _, m := range moves {
		if isOwn(m.Token) {
			continue
		}
		seen[m.RealID] = true
		tokens[m.Token] = true
		held, holding := f.held[m.RealID]
		switch {
		case m.Switched:
			if !f.refreshed[m.Token] {
				rl.Index.Refresh(m.Clients, m.Sessions)
				f.refreshed[m.Token] = true
			}
			if holding {
				f.release(rl, m.RealID, held)
			}
		case m.Stale(now):
			if holding {
				f.release(rl, m.RealID, held)
			}
		case !holding || held.move.Token != m.Token:
			if holding {
				held.release()
			}
			f.held[m.RealID] = followed{move: m, release: holdAll(state, m.Sessions)}
			rl.Logger.Debug("holding the requests for a session another Caddy moves", zap.String("real_id", m.RealID), zap.String("from", m.From), zap.String("to", m.To))
		}
	}
	for root, held := range f.held {
		if !seen[root] {
			f.release(rl, root, held)
		}
	}
	for token := range f.refreshed {
		if !tokens[token] {
			delete(f.refreshed, token)
		}
	}
}

// release lets the requests for a followed move's sessions go, after
// dropping what the cache knows of them: the move may have switched them.
func (f *follower) release(rl *Relocator, root string, held followed) {
	rl.Index.Refresh(held.move.Clients, held.move.Sessions)
	held.release()
	delete(f.held, root)
}

func (f *follower) releaseAll(rl *Relocator) {
	for root, held := range f.held {
		f.release(rl, root, held)
	}
}

// holdAll holds requests for the sessions that are not held already (a
// move of this process holds its own).
func holdAll(state *moving.Namespace, sessions []string) func() {
	var releases []func()
	for _, id := range sessions {
		if r, ok := state.Hold(id); ok {
			releases = append(releases, r)
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, r := range releases {
				r()
			}
		})
	}
}
