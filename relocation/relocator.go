package relocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
	"github.com/sessionid/caddy-sessionid/journal"
	"github.com/sessionid/caddy-sessionid/move"
)

// Relocator moves the sessions of one handler's namespace.
type Relocator struct {
	Namespace string
	Index     *idmap.Index
	Fleet     *fleet.Fleet
	Workers   move.Workers
	// IdleTimeout bounds the wait for a session to be idle before a move.
	IdleTimeout time.Duration
	// Journal, if kept, is what a lost worker's sessions are re-homed from.
	Journal *journal.Store
	Logger  *zap.Logger

	gone singleflight.Group // RehomeGone's, by session and worker
}

// Moved is the answer to a move.
type Moved struct {
	Session  string   `json:"session"`
	From     string   `json:"from"`
	To       string   `json:"to"`
	Sessions []string `json:"sessions"` // the session and its children, real ids
	Events   int      `json:"events"`
	Messages int      `json:"messages"`
	// Forks are the moves of the forks made through the handler of these
	// sessions that were on the same worker (each with its own children
	// and forks); ForksFailed says why the others stayed, by client id.
	Forks       []Moved           `json:"forks,omitempty"`
	ForksFailed map[string]string `json:"forks_failed,omitempty"`
	// OldCopyKept says why the copy on From was not deleted: something
	// reached it after the copy, which is on From only. An operator looks.
	OldCopyKept string `json:"old_copy_kept,omitempty"`
}

// errNotThere: the session is not on the worker a drain expects (it moved
// meanwhile, with its parent).
var errNotThere = errors.New("the session is not on that worker")

// Error is a move refused for a reason the caller can act on, with the
// HTTP status the admin API answers.
type Error struct {
	Status  int
	Message string
	cause   error
}

func (e Error) Error() string { return e.Message }

func (e Error) Unwrap() error { return e.cause }

var (
	registryMu sync.Mutex
	// registry is, per namespace, the relocators of the live configs,
	// newest last: the newest is the namespace's, and a config whose load
	// failed gives it back to the one before.
	registry = map[string][]*Relocator{}
)

// Register makes rl the relocator of its namespace: the admin API and the
// drain jobs use the one of the newest config.
//
// It follows the other Caddys' moves at once (follow.go): before this
// config serves a request, it holds those of sessions being moved.
func Register(rl *Relocator) {
	registryMu.Lock()
	live := registry[rl.Namespace]
	if n := len(live); n > 0 && live[n-1].Fleet != nil && rl.Fleet != nil {
		rl.Fleet.Inherit(live[n-1].Fleet)
	}
	registry[rl.Namespace] = append(live, rl)
	registryMu.Unlock()
	rl.follow()
	startFollowing()
}

// Unregister forgets rl. When no config of its namespace is left, this
// process stops following the namespace's moves: what it held is let go,
// and movers need not wait for it.
func Unregister(rl *Relocator) {
	registryMu.Lock()
	live := slices.DeleteFunc(registry[rl.Namespace], func(x *Relocator) bool { return x == rl })
	if len(live) > 0 {
		registry[rl.Namespace] = live
		registryMu.Unlock()
		return
	}
	delete(registry, rl.Namespace)
	registryMu.Unlock()
	unfollow(rl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = rl.Index.Store.RemoveFollower(ctx, instance)
}

// newest is the relocator of a namespace's newest config.
func newest(namespace string) *Relocator {
	if live := registry[namespace]; len(live) > 0 {
		return live[len(live)-1]
	}
	return nil
}

// current returns the relocator of a namespace; with namespace "", the only
// one there is.
func current(namespace string) (*Relocator, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if namespace != "" {
		if rl := newest(namespace); rl != nil {
			return rl, nil
		}
		return nil, Error{http.StatusNotFound, fmt.Sprintf("no session_ids handler has namespace %q", namespace), nil}
	}
	if len(registry) == 1 {
		for ns := range registry {
			return newest(ns), nil
		}
	}
	if rl := newest("default"); rl != nil {
		return rl, nil
	}
	return nil, Error{http.StatusBadRequest, fmt.Sprintf("%d session_ids handlers are configured: say which with \"namespace\"", len(registry)), nil}
}

// moveDeadline bounds a whole move; quiesceWait bounds the wait, holding
// the session, for the changes under way to finish.
const (
	moveDeadline = 10 * time.Minute
	quiesceWait  = 30 * time.Second
)

// Move puts the session a client calls clientID on worker to, with its
// children and history, and deletes it from the worker it was on. from, if
// not empty, is where the caller expects it (a drain): a session found
// elsewhere is not moved.
//
// Once it has started, a move is not stopped by its caller leaving: a half
// move is undone, or finished, on its own deadline.
func (rl *Relocator) Move(ctx context.Context, clientID, to, from string) (Moved, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), moveDeadline)
	defer cancel()
	out := Moved{Session: clientID, To: to}
	realID, at, err := rl.locate(ctx, clientID)
	if err != nil {
		return out, err
	}
	out.From = at
	if from != "" && at != from {
		return out, Error{http.StatusConflict, fmt.Sprintf("session %s is on %s, not %s", clientID, at, from), errNotThere}
	}
	from = at
	if _, ok := rl.Fleet.Member(to); !ok {
		return out, Error{http.StatusBadRequest, fmt.Sprintf("%s is not one of reverse_proxy's upstreams", to), nil}
	}
	if from == to {
		return out, Error{http.StatusConflict, fmt.Sprintf("session %s is on %s already", clientID, to), nil}
	}
	unlock, err := rl.Index.Lock(ctx, idmap.MoveLockName(realID))
	if err != nil {
		return out, fmt.Errorf("lock the move of %s: %w", clientID, err)
	}
	defer unlock()
	// Another Caddy may have moved it while this one waited for the lock.
	rl.Index.Refresh([]string{clientID}, []string{realID})
	if _, at, err = rl.locate(ctx, clientID); err != nil {
		return out, err
	}
	if at != from {
		return out, Error{http.StatusConflict, fmt.Sprintf("session %s was moved to %s meanwhile", clientID, at), nil}
	}
	tree, err := rl.Workers.Tree(ctx, from, realID)
	if err != nil {
		return out, workerError(err, from)
	}
	idle := rl.IdleTimeout
	if idle == 0 {
		idle = 2 * time.Minute
	}
	// Idle first, without holding anything: a session waiting for its
	// user's answer must get it.
	if err := rl.Workers.WaitIdle(ctx, from, tree, idle); err != nil {
		return out, workerError(err, from)
	}
	for _, id := range tree {
		// A copy there (one an earlier move kept, or made by hand) would be
		// merged into, and deleted if this move failed.
		if status, _, err := rl.Workers.Do(ctx, to, http.MethodGet, "/session/"+url.PathEscape(id), nil, nil); err == nil && status == http.StatusOK {
			return out, Error{http.StatusConflict, fmt.Sprintf("%s has a copy of session %s already (one an earlier move kept?): delete it there, or move elsewhere", to, id), nil}
		}
	}
	// From here on every Caddy sharing the storage holds the session's
	// requests (follow.go), and a stalled mover cannot switch it (fence).
	record, err := rl.announce(ctx, realID, from, to, tree)
	if err != nil {
		return out, err
	}
	defer rl.endRecord(record)
	release, err := rl.hold(ctx, from, tree, record)
	if err != nil {
		return out, err
	}
	defer release()
	c := move.Copy{Session: realID, From: from, To: to}
	copied, err := rl.Workers.Run(ctx, c)
	if err == nil && !slices.Equal(copied.Sessions, tree) {
		err = Error{http.StatusConflict, fmt.Sprintf("session %s got a child during the move; move it again", clientID), nil}
	}
	if err == nil {
		err = rl.catchUp(ctx, c, &copied)
	}
	if err != nil {
		rl.undo(ctx, record, copied.Sessions, nil)
		return out, workerError(err, from)
	}
	out.Sessions, out.Events, out.Messages = copied.Sessions, copied.Events, copied.Messages
	var switched []string
	for _, id := range copied.Sessions {
		if err := rl.switchWorker(ctx, id, to, record.fence); err != nil {
			rl.undo(ctx, record, copied.Sessions, switched)
			return out, fmt.Errorf("the session could not be switched to %s, and stays on %s: %w", to, from, err)
		}
		switched = append(switched, id)
	}
	record.switched(ctx)
	release() // the waiting requests go to the new worker
	rl.Logger.Info("session moved", zap.String("session_id", clientID), zap.String("real_id", realID), zap.String("from", from), zap.String("to", to), zap.Int("sessions", len(copied.Sessions)), zap.Int("messages", copied.Messages))
	// The other Caddys see the switch, and send their requests to the new
	// worker, before the old copy goes.
	if !record.alone {
		sleep(ctx, settleTime)
	}
	if kept := rl.stillChanged(ctx, from, realID, copied); kept != "" {
		// Something reached the old copy after the last look at it (the
		// worker directly, or a Caddy that does not follow the storage):
		// keep it for an operator, and say so.
		rl.Logger.Error("the old copy of a moved session changed after the copy, or could not be checked; it is kept on its worker", zap.String("session_id", clientID), zap.String("real_id", realID), zap.String("worker", from), zap.String("why", kept))
		out.OldCopyKept = kept
	} else {
		rl.deleteCopies(ctx, from, to, copied.Sessions, false)
	}
	// The other Caddys let go of the session before its forks move.
	rl.endRecord(record)
	out.Forks, out.ForksFailed = rl.moveForks(ctx, copied.Sessions, from, to)
	return out, nil
}

// stillChanged says why the old copy of moved sessions must be kept: it
// changed after the copy, a child appeared, or that cannot be known; ""
// when it can go.
func (rl *Relocator) stillChanged(ctx context.Context, from, realID string, copied move.Copied) string {
	changed, err := rl.Workers.Changed(ctx, from, copied.Positions)
	switch {
	case err != nil:
		return "it could not be checked: " + err.Error()
	case changed:
		return "it changed after the copy"
	}
	tree, err := rl.Workers.Tree(ctx, from, realID)
	switch {
	case err != nil:
		return "its sessions could not be listed: " + err.Error()
	case !slices.Equal(tree, copied.Sessions):
		return "it got a child after the copy"
	}
	return ""
}

// moveForks moves, after a session, the forks of it and its children that
// are on the worker it left: each a move of its own.
func (rl *Relocator) moveForks(ctx context.Context, sessions []string, from, to string) ([]Moved, map[string]string) {
	var moved []Moved
	var failed map[string]string
	for _, id := range sessions {
		forks, err := rl.Index.Store.ForksOf(ctx, id)
		if err != nil {
			rl.Logger.Warn("could not list the forks of a moved session; they stay", zap.String("real_id", id), zap.Error(err))
			continue
		}
		for _, fork := range forks {
			clientID, err := rl.clientIDOf(ctx, fork)
			if err != nil {
				continue
			}
			m, err := rl.Move(ctx, clientID, to, from)
			var refused Error
			switch {
			case err == nil:
				moved = append(moved, m)
			case errors.Is(err, errNotThere), errors.As(err, &refused) && refused.Status == http.StatusNotFound:
				// Elsewhere already, or deleted.
			default:
				if failed == nil {
					failed = map[string]string{}
				}
				failed[clientID] = err.Error()
			}
		}
	}
	return moved, failed
}

// catchUpRounds bounds how often a move copies what reached the old copy
// while it was being copied.
const catchUpRounds = 3

// catchUp copies onto the target what reached the sessions after the copy
// (requests another Caddy let through just before it held them), until
// nothing more has.
func (rl *Relocator) catchUp(ctx context.Context, c move.Copy, copied *move.Copied) error {
	for range catchUpRounds {
		if err := rl.Workers.WaitIdle(ctx, c.From, copied.Sessions, quiesceWait); err != nil {
			return err
		}
		events, err := rl.Workers.CatchUp(ctx, c, copied)
		if err != nil || events == 0 {
			return err
		}
		rl.Logger.Info("copied what reached a session during its move", zap.String("real_id", c.Session), zap.Int("events", events))
	}
	return Error{http.StatusConflict, fmt.Sprintf("session %s kept changing on %s during the move; move it again", c.Session, c.From), nil}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// hold makes the requests for the sessions wait, then waits for the changes
// of them under way to finish and checks they are still idle. The returned
// function releases them (once).
func (rl *Relocator) hold(ctx context.Context, worker string, tree []string, record *moveRecord) (func(), error) {
	state := moving.Of(rl.Namespace)
	var releases []func()
	var once sync.Once
	release := func() {
		once.Do(func() {
			for _, r := range releases {
				r()
			}
		})
	}
	for _, id := range tree {
		r, ok := state.Hold(id)
		if !ok {
			release()
			return nil, Error{http.StatusConflict, fmt.Sprintf("session %s is being moved already", id), nil}
		}
		releases = append(releases, r)
	}
	quiet, cancel := context.WithTimeout(ctx, quiesceWait)
	defer cancel()
	if err := state.Quiesce(quiet, tree); err != nil {
		release()
		return nil, Error{http.StatusConflict, fmt.Sprintf("requests that change session %s were still under way after %v", tree[0], quiesceWait), nil}
	}
	// Until every Caddy holds them too, and what they let through before
	// has arrived.
	if !record.alone {
		sleep(ctx, time.Until(record.announced.Add(settleTime)))
	}
	if err := rl.Workers.WaitIdle(ctx, worker, tree, 5*time.Second); err != nil {
		release()
		return nil, workerError(err, worker)
	}
	return release, nil
}

// undo takes a failed move back: the sessions switched go back to the old
// worker, and the target's copies are deleted (quietly, as a move's old
// copies), unless another move has taken over: its copies may be the same.
func (rl *Relocator) undo(ctx context.Context, record *moveRecord, copied, switched []string) {
	to, from := record.To, record.From
	if err := record.fence(ctx); err != nil {
		rl.Logger.Error("a failed move was taken over by another; its copies are left to that one", zap.String("real_id", record.RealID), zap.Error(err))
		return
	}
	for _, id := range switched {
		if err := rl.switchWorker(ctx, id, from, record.fence); err != nil {
			rl.Logger.Error("a failed move could not switch a session back; it is served by the new worker", zap.String("real_id", id), zap.String("worker", to), zap.Error(err))
			return // its copy on the target is the one served now: keep it
		}
	}
	if len(copied) > 0 {
		rl.deleteCopies(ctx, to, from, copied, true)
	}
}

// deleteCopies deletes the copies of sessions on a worker they have left,
// after recording the move so that the deletion's session.deleted is not
// passed to clients: session_ids.moved is, unless the move was undone (the
// copies of a failed move go without a word).
func (rl *Relocator) deleteCopies(ctx context.Context, worker, now string, ids []string, undone bool) {
	for _, id := range ids {
		if err := rl.Index.Store.SaveMoved(ctx, idmap.Moved{RealID: id, From: worker, To: now, At: time.Now().UTC(), Undone: undone}); err != nil {
			rl.Logger.Warn("could not record a move; the copy stays on its worker", zap.String("real_id", id), zap.String("worker", worker), zap.Error(err))
			return
		}
	}
	// Deleting the root deletes its children.
	status, body, err := rl.Workers.Do(ctx, worker, http.MethodDelete, "/session/"+url.PathEscape(ids[0]), nil, nil)
	if err != nil || status != http.StatusOK && status != http.StatusNotFound {
		rl.Logger.Warn("a copy of a moved session could not be deleted", zap.String("real_id", ids[0]), zap.String("worker", worker), zap.Int("status", status), zap.ByteString("answer", body), zap.Error(err))
	}
}

// workerError gives a worker's refusal its own status in the admin API: a
// 404 of the session's own worker is the session's; any other is a 502.
func workerError(err error, source string) error {
	var status move.StatusError
	switch {
	case errors.As(err, &status) && status.Status == http.StatusNotFound && status.Worker == source:
		return Error{http.StatusNotFound, err.Error(), nil}
	case errors.As(err, &status) && (status.Status == http.StatusUnauthorized || status.Status == http.StatusForbidden):
		return Error{http.StatusBadGateway, err.Error() + ": the worker refuses the module's own requests; give it its credentials with upstream_authorization", nil}
	case errors.Is(err, move.ErrBusy):
		return Error{http.StatusConflict, err.Error(), nil}
	case errors.Is(err, move.ErrCannotMove):
		return Error{http.StatusNotImplemented, err.Error(), nil}
	}
	return err
}

// locate finds the real id and worker of a client id.
func (rl *Relocator) locate(ctx context.Context, clientID string) (realID, worker string, err error) {
	realID, worker, mapped, err := rl.Index.Route(ctx, clientID)
	if err != nil {
		return "", "", err
	}
	if !mapped {
		realID = clientID
	}
	if worker == "" {
		recorded, known, err := rl.Index.WorkerOf(ctx, realID)
		if err != nil {
			return "", "", err
		}
		if known {
			worker = recorded
		}
	}
	if worker != "" {
		return realID, worker, nil
	}
	for _, u := range rl.Fleet.Workers() {
		status, _, err := rl.Workers.Do(ctx, u.Dial, http.MethodGet, "/session/"+url.PathEscape(realID), nil, nil)
		if err == nil && status == http.StatusOK {
			return realID, u.Dial, nil
		}
	}
	return "", "", Error{http.StatusNotFound, fmt.Sprintf("no worker holds session %s", clientID), nil}
}

// switchWorker records worker as the one holding the upstream session
// realID: in its mapping, if it has one, and in its worker record.
//
// The mapping is changed under its client id's lock, so that a delete or a
// create of the id is before or after it, never in between, and only if
// fence, checked under that lock, says the move is still this one.
func (rl *Relocator) switchWorker(ctx context.Context, realID, worker string, fence func(context.Context) error) error {
	clientID, mapped, err := rl.Index.ClientOf(ctx, realID)
	if err != nil {
		return err
	}
	if !mapped {
		clientID = realID // a session under its own id (direct mode): its lock
	}
	unlock, err := rl.Index.Lock(ctx, clientID)
	if err != nil {
		return err
	}
	defer unlock()
	if err := fence(ctx); err != nil {
		return err
	}
	if mapped {
		m, err := rl.Index.Store.Load(ctx, clientID)
		if err != nil {
			return err // a delete came first
		}
		if m.RealID != realID {
			return fmt.Errorf("%s was deleted and made again during the move", clientID)
		}
		m.Worker = worker
		if err := rl.Index.Save(ctx, m); err != nil {
			return err
		}
	}
	return rl.Index.SaveWorker(ctx, realID, worker)
}

// clientIDOf is the client id of an upstream session: its mapping's, or
// its own.
func (rl *Relocator) clientIDOf(ctx context.Context, realID string) (string, error) {
	clientID, mapped, err := rl.Index.ClientOf(ctx, realID)
	if err != nil || !mapped {
		return realID, err
	}
	return clientID, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (rl *Relocator) moves() *moving.Namespace { return moving.Of(rl.Namespace) }
