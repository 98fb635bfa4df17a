package relocation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/journal"
	"github.com/sessionid/caddy-sessionid/move"
)

// Rehomed is the answer to a re-home of a lost worker's sessions.
type Rehomed struct {
	Worker   string            `json:"worker"`
	Rehomed  []RehomedSession  `json:"rehomed"`
	Failed   map[string]string `json:"failed"` // client id → why
	Finished time.Time         `json:"finished"`
}

// RehomedSession is one session made again on another worker.
type RehomedSession struct {
	Session  string `json:"session"`
	To       string `json:"to"`
	Messages int    `json:"messages"`
}

// Rehome makes the sessions a lost worker held again on the healthy
// workers, from their journals: each with every event its journal holds
// (every completed turn), under the same real id, and switches the index to
// them. A session whose journal is full, or that the index records on
// another worker (moved off meanwhile), is not touched. One Caddy of those
// sharing the storage re-homes a worker at a time.
//
// A worker that passes its health checks is refused: its sessions are
// newer than their journals (move or drain it instead).
func (rl *Relocator) Rehome(ctx context.Context, worker string) (Rehomed, error) {
	ctx, cancel := context.WithTimeout(ctx, moveDeadline)
	defer cancel()
	out := Rehomed{Worker: worker, Failed: map[string]string{}}
	if rl.Journal == nil {
		return out, Error{http.StatusConflict, "no journal is kept (journal on): nothing to re-home from", nil}
	}
	if u, ok := rl.Fleet.Member(worker); !ok {
		return out, Error{http.StatusBadRequest, fmt.Sprintf("%s is not one of reverse_proxy's upstreams", worker), nil}
	} else if u.Healthy() {
		return out, Error{http.StatusConflict, fmt.Sprintf("%s passes its health checks: its sessions are newer than their journals; move or drain it instead", worker), nil}
	}
	sum := sha256.Sum256([]byte(worker))
	unlock, err := rl.Index.Lock(ctx, "rehome/"+hex.EncodeToString(sum[:]))
	if err != nil {
		return out, err
	}
	defer unlock()
	ids, err := rl.Journal.Sessions(ctx)
	if err != nil {
		return out, err
	}
	type lost struct {
		realID, parent, home string
		events               []journal.Event
	}
	var sessions []lost
	for _, id := range ids {
		home, err := rl.Journal.HomeOf(ctx, id)
		if err != nil || home.Worker != worker {
			continue
		}
		if rl.freshWorker(ctx, id) != worker {
			continue // moved or re-homed already, or deleted
		}
		events, err := rl.Journal.Load(ctx, id)
		if err != nil {
			clientID, _ := rl.clientIDOf(ctx, id)
			out.Failed[clientID] = "its journal cannot be replayed: " + err.Error()
			continue
		}
		if len(events) == 0 {
			continue // nothing journaled yet
		}
		sessions = append(sessions, lost{realID: id, parent: parentOf(events), home: home.Directory, events: events})
	}
	// Parents first; a child goes where its parent went.
	placed := map[string]string{}
	targets := rl.healthyOthers(worker)
	if len(targets) == 0 && len(sessions) > 0 {
		return out, Error{http.StatusServiceUnavailable, "no other healthy worker to re-home to", nil}
	}
	next := 0
	for len(sessions) > 0 {
		var later []lost
		progressed := false
		for _, s := range sessions {
			waiting := false
			for _, other := range sessions {
				waiting = waiting || other.realID == s.parent
			}
			if waiting {
				later = append(later, s)
				continue
			}
			progressed = true
			to := placed[s.parent]
			if to == "" {
				to = targets[next%len(targets)]
				next++
			}
			clientID, _ := rl.clientIDOf(ctx, s.realID)
			messages, err := rl.rehomeOne(ctx, s.realID, worker, to, s.home, s.events)
			if err != nil {
				rehomes.WithLabelValues(rl.Namespace, "worker_lost", "failed").Inc()
				out.Failed[clientID] = err.Error()
				rl.Logger.Error("a lost worker's session could not be re-homed", zap.String("session_id", clientID), zap.String("worker", worker), zap.String("to", to), zap.Error(err))
				continue
			}
			rehomes.WithLabelValues(rl.Namespace, "worker_lost", "rehomed").Inc()
			placed[s.realID] = to
			out.Rehomed = append(out.Rehomed, RehomedSession{Session: clientID, To: to, Messages: messages})
		}
		if !progressed {
			break // a cycle of parents: impossible upstream
		}
		sessions = later
	}
	out.Finished = time.Now().UTC()
	rl.Logger.Info("re-homed a lost worker's sessions", zap.String("worker", worker), zap.Int("sessions", len(out.Rehomed)), zap.Int("failed", len(out.Failed)))
	return out, nil
}

// rehomeOne replays one session's journal onto to and switches the index,
// under the session's move lock. Like a move, it is announced in the
// storage (a moving/ record), so that the other Caddys of a cluster hold
// their requests for the session meanwhile and follow the switch at once.
func (rl *Relocator) rehomeOne(ctx context.Context, realID, from, to, home string, events []journal.Event) (int, error) {
	unlock, err := rl.Index.Lock(ctx, idmap.MoveLockName(realID))
	if err != nil {
		return 0, err
	}
	defer unlock()
	if recorded := rl.freshWorker(ctx, realID); recorded != from {
		return 0, fmt.Errorf("it is recorded on %q now, not %s", recorded, from)
	}
	if there, _ := rl.hasSession(ctx, to, realID); there {
		return 0, fmt.Errorf("%s has a copy of it already", to)
	}
	announced, err := rl.announce(ctx, realID, from, to, []string{realID})
	if err != nil {
		return 0, err
	}
	defer rl.endRecord(announced)
	messages, err := rl.Workers.Restore(ctx, to, home, events)
	if err != nil {
		rl.deleteCopies(ctx, to, from, []string{realID}, true)
		return 0, err
	}
	// Its copy on the lost worker, if that comes back, is stale: deleted
	// then without a word to clients (SweepRehomed).
	record := idmap.Moved{RealID: realID, From: from, To: to, At: time.Now().UTC()}
	if from != to {
		err = rl.Index.Store.SaveRehomed(ctx, record)
	}
	if err == nil {
		err = rl.switchWorker(ctx, realID, to, announced.fence)
	}
	if err != nil {
		// Nothing switched: the copy made on to is no one's.
		_ = rl.Index.Store.RemoveRehomed(ctx, realID)
		rl.deleteCopies(ctx, to, from, []string{realID}, true)
		return 0, err
	}
	announced.switched(ctx)
	return messages, nil
}

// freshWorker is the worker the storage records for an upstream session,
// read past the cache (another Caddy may have re-homed or moved it): the
// mapping's, else the worker record's; "" when none is.
func (rl *Relocator) freshWorker(ctx context.Context, realID string) string {
	clientID, mapped, err := rl.Index.ClientOf(ctx, realID)
	if err == nil && mapped {
		rl.Index.Refresh([]string{clientID}, []string{realID})
	} else {
		rl.Index.Refresh(nil, []string{realID})
	}
	return rl.Index.RecordedWorker(ctx, realID)
}

// healthyOthers are the workers a lost worker's sessions may go to: the
// pool's healthy ones, not draining, but the lost one.
func (rl *Relocator) healthyOthers(lost string) []string {
	var out []string
	state := rl.moves()
	for _, u := range rl.Fleet.Workers() {
		if u.Dial != lost && u.Healthy() && !state.Draining(u.Dial) {
			out = append(out, u.Dial)
		}
	}
	return out
}

// SweepRehomed deletes the stale copies of re-homed sessions on the workers
// they were re-homed off, once those are back: quietly (as a move's old
// copies), and only where the index does not send the session there.
func (rl *Relocator) SweepRehomed(ctx context.Context) {
	records, err := rl.Index.Store.Rehomed(ctx)
	if err != nil {
		rl.Logger.Debug("could not list the re-homed sessions", zap.Error(err))
		return
	}
	healthy := map[string]bool{}
	for _, u := range rl.Fleet.Workers() {
		healthy[u.Dial] = u.Healthy()
	}
	for _, r := range records {
		if !healthy[r.From] {
			continue // still lost, or not configured: nothing to sweep yet
		}
		if rl.Index.RecordedWorker(ctx, r.RealID) == r.From {
			_ = rl.Index.Store.RemoveRehomed(ctx, r.RealID) // moved back since
			continue
		}
		tree, err := rl.Workers.Tree(ctx, r.From, r.RealID)
		var status move.StatusError
		notFound := errors.As(err, &status) && status.Status == http.StatusNotFound
		if err != nil && !notFound {
			continue
		}
		if err == nil {
			// Deleting a session deletes its children: only when every one
			// of them is a stale copy too.
			stale := true
			for _, id := range tree[1:] {
				if rl.Index.RecordedWorker(ctx, id) == r.From {
					stale = false
				}
			}
			if !stale {
				rl.Logger.Warn("a re-homed session's stale copy has a child that lives there; it is kept", zap.String("real_id", r.RealID), zap.String("worker", r.From))
				continue
			}
			rl.deleteCopies(ctx, r.From, r.To, tree, true)
			rl.Logger.Info("deleted the stale copy of a re-homed session on the worker that came back", zap.String("real_id", r.RealID), zap.String("worker", r.From))
		}
		{
			if err := rl.Index.Store.RemoveRehomed(ctx, r.RealID); err != nil && !errors.Is(err, idmap.ErrNotFound) {
				rl.Logger.Warn("could not forget a re-homed session", zap.Error(err))
			}
		}
	}
}
