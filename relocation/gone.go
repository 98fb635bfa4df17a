package relocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/journal"
)

// ErrNotRecordedThere: the session is not recorded on the worker that
// answered 404 for it (deleted, or moved off meanwhile): the 404 stands.
var ErrNotRecordedThere = errors.New("the session is not recorded on that worker")

// GoneError says why a session that its recorded worker no longer has
// could not be made again: no journal is kept, or its journal is missing,
// full or broken. The session is lost; requests for it are answered 404
// with this reason.
type GoneError struct {
	Session, Worker, Why string
}

func (e GoneError) Error() string {
	return fmt.Sprintf("session %s is recorded on worker %s, which no longer has it (a new process on its address, or its data was lost), and it cannot be made again: %s", e.Session, e.Worker, e.Why)
}

// goneDepth bounds how many parents a re-home of a gone session brings
// back with it.
const goneDepth = 16

// RehomeGone makes a session again, from its journal, when the worker the
// index records it on answers 404 for it: the worker was replaced (a new
// process on a reused address) or lost its data. It is the re-home of a
// lost worker (Rehome) for that one session, and for its parents that the
// worker lost too (a child goes where its parent is): placed on a healthy
// worker that is not draining, preferring others to the one that lost it.
//
// It returns the worker the session is on now: the one it was re-homed to,
// or the one another request (of this Caddy or another) re-homed or moved
// it to meanwhile. ErrNotRecordedThere: the index does not record it on
// worker (any more); the 404 is the session's. A GoneError: it cannot be
// made again. Concurrent calls for one session share one re-home.
func (rl *Relocator) RehomeGone(ctx context.Context, realID, worker string) (string, error) {
	v, err, _ := rl.gone.Do(realID+" "+worker, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), moveDeadline)
		defer cancel()
		return rl.rehomeGone(ctx, realID, worker, 0)
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (rl *Relocator) rehomeGone(ctx context.Context, realID, worker string, depth int) (string, error) {
	clientID, _ := rl.clientIDOf(ctx, realID)
	switch recorded := rl.freshWorker(ctx, realID); {
	case recorded == "":
		return "", ErrNotRecordedThere
	case recorded != worker:
		return recorded, nil // re-homed or moved meanwhile
	}
	if there, err := rl.hasSession(ctx, worker, realID); err != nil {
		return "", err
	} else if there {
		return worker, nil // the 404 was of something in it, not of it
	}
	if rl.Journal == nil {
		return "", GoneError{clientID, worker, "no journal is kept (journal on)"}
	}
	home, err := rl.Journal.HomeOf(ctx, realID)
	if err != nil {
		return "", GoneError{clientID, worker, "it has no journal"}
	}
	events, err := rl.Journal.Load(ctx, realID)
	switch {
	case errors.Is(err, journal.ErrFull):
		return "", GoneError{clientID, worker, "its journal passed its size limit (journal limit)"}
	case err != nil:
		return "", GoneError{clientID, worker, "its journal cannot be replayed: " + err.Error()}
	case len(events) == 0:
		return "", GoneError{clientID, worker, "its journal is empty"}
	}
	to, err := rl.goneTarget(ctx, realID, worker, parentOf(events), depth)
	if err != nil {
		return "", err
	}
	messages, err := rl.rehomeOne(ctx, realID, worker, to, home.Directory, events)
	if err != nil {
		// Another request may have won the race for it.
		if recorded := rl.freshWorker(ctx, realID); recorded != worker && recorded != "" {
			return recorded, nil
		}
		rehomes.WithLabelValues(rl.Namespace, "session_gone", "failed").Inc()
		return "", err
	}
	rehomes.WithLabelValues(rl.Namespace, "session_gone", "rehomed").Inc()
	rl.Logger.Warn("a session's worker no longer had it: made it again from its journal", zap.String("session_id", clientID), zap.String("worker", worker), zap.String("to", to), zap.Int("messages", messages))
	if depth == 0 {
		go rl.rehomeMissing(worker)
	}
	return to, nil
}

// rehomeMissing makes again, from their journals, the other sessions a
// worker that lost one no longer has (it lost its data, most likely all of
// it): each journaled session recorded there that it does not have, a
// child where its parent went. One pass per worker at a time.
func (rl *Relocator) rehomeMissing(worker string) {
	_, _, _ = rl.gone.Do("missing "+worker, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), moveDeadline)
		defer cancel()
		ids, err := rl.Journal.Sessions(ctx)
		if err != nil {
			rl.Logger.Warn("could not list the journals to find what a worker lost", zap.String("worker", worker), zap.Error(err))
			return nil, nil
		}
		rehomed, failed := 0, 0
		for _, id := range ids {
			if home, err := rl.Journal.HomeOf(ctx, id); err != nil || home.Worker != worker {
				continue
			}
			if rl.Index.RecordedWorker(ctx, id) != worker {
				continue
			}
			switch to, err := rl.rehomeGone(ctx, id, worker, 0); {
			case errors.Is(err, ErrNotRecordedThere):
			case err != nil:
				failed++
				rl.Logger.Error("a session a worker lost could not be made again", zap.String("real_id", id), zap.String("worker", worker), zap.Error(err))
			case to != worker:
				rehomed++
			}
		}
		rl.Logger.Info("made again what a worker lost", zap.String("worker", worker), zap.Int("sessions", rehomed), zap.Int("failed", failed))
		return nil, nil
	})
}

// goneTarget is where a gone session goes: where its parent is (brought
// back first if the worker lost it too), else a healthy worker chosen by
// the session's id among the others, else the worker that lost it, which
// answers.
func (rl *Relocator) goneTarget(ctx context.Context, realID, worker, parent string, depth int) (string, error) {
	if parent != "" {
		switch recorded := rl.freshWorker(ctx, parent); {
		case recorded == worker && depth < goneDepth:
			return rl.rehomeGone(ctx, parent, worker, depth+1)
		case recorded != "":
			if u, ok := rl.Fleet.Member(recorded); ok && u.Healthy() {
				return recorded, nil
			}
		}
	}
	targets := rl.healthyOthers(worker)
	if len(targets) == 0 {
		if u, ok := rl.Fleet.Member(worker); ok && u.Healthy() {
			return worker, nil
		}
		return "", Error{http.StatusServiceUnavailable, "no healthy worker to re-home to", nil}
	}
	sum := fnv.New32a()
	_, _ = sum.Write([]byte(realID))
	return targets[int(sum.Sum32()%uint32(len(targets)))], nil
}

// hasSession asks a worker whether it has a session.
func (rl *Relocator) hasSession(ctx context.Context, worker, realID string) (bool, error) {
	status, _, err := rl.Workers.Do(ctx, worker, http.MethodGet, "/session/"+url.PathEscape(realID), nil, nil)
	switch {
	case err != nil:
		return false, err
	case status == http.StatusOK:
		return true, nil
	case status == http.StatusNotFound:
		return false, nil
	}
	return false, workerError(fmt.Errorf("GET /session/%s on %s answered %d", realID, worker, status), "")
}

// parentOf is the parent a session's journal says it was made under.
func parentOf(events []journal.Event) string {
	var created struct {
		Info struct {
			ParentID string `json:"parentID"`
		} `json:"info"`
	}
	_ = json.Unmarshal(events[0].Data, &created)
	return created.Info.ParentID
}
