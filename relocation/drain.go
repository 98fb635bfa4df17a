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

	"github.com/sessionid/caddy-sessionid/internal/moving"
)

// Drain is the state of a drain job: every session off one worker, then
// done. It lives in the process, not in the config: a reload in the middle
// goes on with the relocator of the new config.
type Drain struct {
	Namespace string            `json:"namespace"`
	Worker    string            `json:"worker"`
	Started   time.Time         `json:"started"`
	Finished  *time.Time        `json:"finished,omitempty"`
	Moved     []Moved           `json:"moved"`
	Failed    map[string]string `json:"failed"` // client id → why
	Remaining int               `json:"remaining"`
	Error     string            `json:"error,omitempty"`

	mu         sync.Mutex
	done       chan struct{}
	failedReal map[string]bool
}

// maxRounds bounds how often a drain lists the worker again: sessions made
// on it meanwhile (children and forks of its sessions go to their parent's
// worker) are moved in the next round.
const maxRounds = 5

var (
	drainsMu sync.Mutex
	drains   = map[string]*Drain{}
)

// StartDrain marks the worker as draining (no new session is placed on it,
// here and after a restart) and starts moving its sessions to the other
// workers, or joins the drain of it under way.
func StartDrain(ctx context.Context, namespace, worker string) (*Drain, error) {
	rl, err := current(namespace)
	if err != nil {
		return nil, err
	}
	if _, ok := rl.Fleet.Member(worker); !ok {
		return nil, Error{http.StatusBadRequest, fmt.Sprintf("%s is not one of reverse_proxy's upstreams", worker), nil}
	}
	key := rl.Namespace + "|" + worker
	drainsMu.Lock()
	defer drainsMu.Unlock()
	if d := drains[key]; d != nil && !d.finished() {
		return d, nil
	}
	if err := rl.setDraining(ctx, worker, true); err != nil {
		return nil, err
	}
	d := &Drain{Namespace: rl.Namespace, Worker: worker, Started: time.Now().UTC(), Failed: map[string]string{}, failedReal: map[string]bool{}, done: make(chan struct{})}
	drains[key] = d
	go d.run()
	return d, nil
}

// DrainOf returns the drain of a worker, running or finished, if any.
func DrainOf(namespace, worker string) (*Drain, error) {
	rl, err := current(namespace)
	if err != nil {
		return nil, err
	}
	drainsMu.Lock()
	defer drainsMu.Unlock()
	if d := drains[rl.Namespace+"|"+worker]; d != nil {
		return d, nil
	}
	return nil, Error{http.StatusNotFound, fmt.Sprintf("no drain of %s has run", worker), nil}
}

// Undrain lets new sessions go to a worker again. A drain of it still
// running goes on.
func Undrain(ctx context.Context, namespace, worker string) error {
	rl, err := current(namespace)
	if err != nil {
		return err
	}
	return rl.setDraining(ctx, worker, false)
}

// Wait returns when the drain is finished or ctx is done.
func (d *Drain) Wait(ctx context.Context) {
	select {
	case <-d.done:
	case <-ctx.Done():
	}
}

// Snapshot is the drain's state, to answer with.
func (d *Drain) Snapshot() json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	raw, _ := json.Marshal(d)
	return raw
}

func (d *Drain) run() {
	defer close(d.done)
	ctx := context.Background()
	for round := 0; round < maxRounds; round++ {
		rl, err := current(d.Namespace)
		if err != nil {
			d.finish(err.Error())
			return
		}
		roots, err := rl.rootsOn(ctx, d.Worker)
		if err != nil {
			d.finish("listing the sessions of " + d.Worker + ": " + err.Error())
			return
		}
		d.mu.Lock()
		var todo []string
		for _, id := range roots {
			if !d.failedReal[id] {
				todo = append(todo, id)
			}
		}
		d.Remaining = len(todo)
		d.mu.Unlock()
		if len(todo) == 0 {
			d.finish("")
			return
		}
		for i, realID := range todo {
			rl, err := current(d.Namespace) // the newest config's, after a reload
			if err != nil {
				d.finish(err.Error())
				return
			}
			clientID, err := rl.clientIDOf(ctx, realID)
			if err == nil {
				var to string
				if to, err = rl.target(d.Worker, i); err == nil {
					var moved Moved
					if moved, err = rl.Move(ctx, clientID, to, d.Worker); err == nil {
						d.mu.Lock()
						d.Moved = append(d.Moved, moved)
						d.mu.Unlock()
					}
				}
			}
			var refused Error
			busy := errors.As(err, &refused) && refused.Status == http.StatusConflict
			d.mu.Lock()
			if err == nil || errors.Is(err, errNotThere) { // moved, or moved with its parent
				delete(d.Failed, clientID)
			} else if busy {
				d.Failed[clientID] = err.Error() // tried again next round
			} else {
				d.Failed[clientID], d.failedReal[realID] = err.Error(), true
				rl.Logger.Warn("a session could not be moved off a draining worker", zap.String("session_id", clientID), zap.String("worker", d.Worker), zap.Error(err))
			}
			d.Remaining = len(todo) - i - 1
			d.mu.Unlock()
		}
	}
	d.finish(fmt.Sprintf("sessions were left on %s after %d rounds (busy, or made there meanwhile)", d.Worker, maxRounds))
}

func (d *Drain) finished() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.Finished != nil
}

func (d *Drain) finish(failure string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now().UTC()
	d.Finished, d.Error = &now, failure
}

// target chooses the worker the i-th session of a drain goes to: the
// available workers that are not draining, in turn.
func (rl *Relocator) target(from string, i int) (string, error) {
	state := moving.Of(rl.Namespace)
	var candidates []string
	for _, u := range rl.Fleet.Workers() {
		if u.Dial != from && u.Available() && !state.Draining(u.Dial) {
			candidates = append(candidates, u.Dial)
		}
	}
	if len(candidates) == 0 {
		return "", Error{http.StatusServiceUnavailable, "no other worker is available and not draining", nil}
	}
	return candidates[i%len(candidates)], nil
}

// rootsOn lists the real ids of the sessions on a worker that have no
// parent (children move with their parents).
func (rl *Relocator) rootsOn(ctx context.Context, worker string) ([]string, error) {
	// GET /session lists one project's only: a drain that read it would
	// say it is done while other projects' sessions stay.
	status, raw, err := rl.Workers.Do(ctx, worker, http.MethodGet, "/experimental/session", url.Values{"archived": {"true"}, "limit": {"1000000"}}, nil)
	if err != nil {
		return nil, err
	}
	var listed []struct {
		ID       string  `json:"id"`
		ParentID *string `json:"parentID"`
	}
	if status != http.StatusOK || json.Unmarshal(raw, &listed) != nil {
		return nil, fmt.Errorf("%s answers GET /experimental/session with %d, not a list of every session", worker, status)
	}
	var roots []string
	for _, s := range listed {
		if s.ParentID == nil || *s.ParentID == "" {
			roots = append(roots, s.ID)
		}
	}
	return roots, nil
}

// setDraining marks a worker as draining or not, here and in the storage
// (so that a restart keeps it out of placement).
func (rl *Relocator) setDraining(ctx context.Context, worker string, on bool) error {
	unlock, err := rl.Index.Lock(ctx, "draining")
	if err != nil {
		return err
	}
	defer unlock()
	workers, err := rl.Index.Store.LoadDraining(ctx)
	if err != nil {
		return err
	}
	workers = slices.DeleteFunc(workers, func(w string) bool { return w == worker })
	if on {
		workers = append(workers, worker)
	}
	if err := rl.Index.Store.SaveDraining(ctx, workers); err != nil {
		return err
	}
	moving.Of(rl.Namespace).SetDraining(worker, on)
	return nil
}

// LoadDraining marks the workers the storage says are draining, at
// provision.
func (rl *Relocator) LoadDraining(ctx context.Context) error {
	workers, err := rl.Index.Store.LoadDraining(ctx)
	if err != nil {
		return err
	}
	state := moving.Of(rl.Namespace)
	for _, w := range workers {
		state.SetDraining(w, true)
	}
	return nil
}
