package relocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
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
	Logger      *zap.Logger
}

// Moved is the answer to a move.
type Moved struct {
	Session  string   `json:"session"`
	From     string   `json:"from"`
	To       string   `json:"to"`
	Sessions []string `json:"sessions"` // the session and its children, real ids
	Events   int      `json:"events"`
	Messages int      `json:"messages"`
}

// Error is a move refused for a reason the caller can act on, with the
// HTTP status the admin API answers.
type Error struct {
	Status  int
	Message string
}

func (e Error) Error() string { return e.Message }

var (
	registryMu sync.Mutex
	registry   = map[string]*Relocator{}
)

// Register makes rl the relocator of its namespace: the admin API and the
// drain jobs use the one of the newest config.
func Register(rl *Relocator) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[rl.Namespace] = rl
}

// Unregister forgets rl, unless a newer config has registered another.
func Unregister(rl *Relocator) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if registry[rl.Namespace] == rl {
		delete(registry, rl.Namespace)
	}
}

// current returns the relocator of a namespace; with namespace "", the only
// one there is.
func current(namespace string) (*Relocator, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if namespace != "" {
		if rl := registry[namespace]; rl != nil {
			return rl, nil
		}
		return nil, Error{http.StatusNotFound, fmt.Sprintf("no session_ids handler has namespace %q", namespace)}
	}
	if len(registry) == 1 {
		for _, rl := range registry {
			return rl, nil
		}
	}
	if rl := registry["default"]; rl != nil {
		return rl, nil
	}
	return nil, Error{http.StatusBadRequest, fmt.Sprintf("%d session_ids handlers are configured: say which with \"namespace\"", len(registry))}
}

// Move puts the session a client calls clientID on worker to, with its
// children and history, and deletes it from the worker it was on.
func (rl *Relocator) Move(ctx context.Context, clientID, to string) (Moved, error) {
	out := Moved{Session: clientID, To: to}
	realID, from, err := rl.locate(ctx, clientID)
	if err != nil {
		return out, err
	}
	out.From = from
	if _, ok := rl.Fleet.Member(to); !ok {
		return out, Error{http.StatusBadRequest, fmt.Sprintf("%s is not one of reverse_proxy's upstreams", to)}
	}
	if from == to {
		return out, Error{http.StatusConflict, fmt.Sprintf("session %s is on %s already", clientID, to)}
	}
	unlock, err := rl.Index.Lock(ctx, idmap.MoveLockName(realID))
	if err != nil {
		return out, fmt.Errorf("lock the move of %s: %w", clientID, err)
	}
	defer unlock()
	tree, err := rl.Workers.Tree(ctx, from, realID)
	if err != nil {
		return out, err
	}
	state := moving.Of(rl.Namespace)
	var releases []func()
	releaseAll := func() {
		for _, release := range releases {
			release()
		}
		releases = nil
	}
	defer releaseAll()
	for _, id := range tree {
		release, ok := state.Hold(id)
		if !ok {
			return out, Error{http.StatusConflict, fmt.Sprintf("session %s is being moved already", id)}
		}
		releases = append(releases, release)
	}
	copied, err := rl.Workers.Run(ctx, move.Copy{Session: realID, From: from, To: to, IdleTimeout: rl.IdleTimeout})
	if err != nil {
		if errors.Is(err, move.ErrBusy) {
			return out, Error{http.StatusConflict, err.Error()}
		}
		return out, err
	}
	out.Sessions, out.Events, out.Messages = copied.Sessions, copied.Events, copied.Messages
	for _, id := range copied.Sessions {
		if err := rl.switchWorker(ctx, id, to); err != nil {
			return out, fmt.Errorf("the session was copied to %s but could not be switched to it (it is still served by %s): %w", to, from, err)
		}
	}
	releaseAll() // the waiting requests go to the new worker
	rl.Logger.Info("session moved", zap.String("session_id", clientID), zap.String("real_id", realID), zap.String("from", from), zap.String("to", to), zap.Int("sessions", len(copied.Sessions)), zap.Int("messages", copied.Messages))
	for _, id := range copied.Sessions {
		if err := rl.Index.Store.SaveMoved(ctx, idmap.Moved{RealID: id, From: from, To: to, At: time.Now().UTC()}); err != nil {
			rl.Logger.Warn("could not record a move; the old copy stays on its worker", zap.String("real_id", id), zap.Error(err))
			return out, nil
		}
	}
	status, body, err := rl.Workers.Do(ctx, from, http.MethodDelete, "/session/"+url.PathEscape(realID), nil, nil)
	if err != nil || status != http.StatusOK && status != http.StatusNotFound {
		rl.Logger.Warn("the old copy of a moved session could not be deleted", zap.String("real_id", realID), zap.String("worker", from), zap.Int("status", status), zap.ByteString("answer", body), zap.Error(err))
	}
	return out, nil
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
	return "", "", Error{http.StatusNotFound, fmt.Sprintf("no worker holds session %s", clientID)}
}

// switchWorker records worker as the one holding the upstream session
// realID: in its mapping, if it has one, and in its worker record.
func (rl *Relocator) switchWorker(ctx context.Context, realID, worker string) error {
	clientID, mapped, err := rl.Index.ClientOf(ctx, realID)
	if err != nil {
		return err
	}
	if mapped {
		m, err := rl.Index.Store.Load(ctx, clientID)
		if err != nil {
			return err
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
