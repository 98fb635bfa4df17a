// Package moving is the state of session moves that every part of the
// handler consults and that outlives a config reload: the sessions being
// moved, whose requests wait until the move ends, and the workers being
// drained, on which no new session is placed. It is per namespace, in the
// process; package relocation changes it and keeps the draining workers in
// the storage too.
package moving

import (
	"context"
	"sync"
	"sync/atomic"
)

// Namespace is the move state of one namespace.
type Namespace struct {
	mu       sync.Mutex
	holds    map[string]chan struct{}
	draining map[string]bool
	// writing counts, per session, the requests that may change it which
	// have been routed to its worker and are not finished: a move waits
	// for them before it copies.
	writing map[string]int
	changed *sync.Cond
	// anyHeld and anyDraining let requests skip the lock when nothing moves.
	anyHeld, anyDraining atomic.Int32
}

var (
	registryMu sync.Mutex
	registry   = map[string]*Namespace{}
)

// Of returns the move state of a namespace (made on first use, kept for the
// life of the process: a few words each).
func Of(namespace string) *Namespace {
	registryMu.Lock()
	defer registryMu.Unlock()
	n := registry[namespace]
	if n == nil {
		n = &Namespace{holds: map[string]chan struct{}{}, draining: map[string]bool{}, writing: map[string]int{}}
		n.changed = sync.NewCond(&n.mu)
		registry[namespace] = n
	}
	return n
}

// Hold makes requests for the upstream session realID wait (see Wait) until
// release runs. It reports false, holding nothing, when the session is held
// already (another move of it is under way).
func (n *Namespace) Hold(realID string) (release func(), ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, held := n.holds[realID]; held {
		return nil, false
	}
	done := make(chan struct{})
	n.holds[realID] = done
	n.anyHeld.Add(1)
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.holds[realID] == done {
			delete(n.holds, realID)
			n.anyHeld.Add(-1)
			close(done)
		}
	}, true
}

// Wait returns at once when the session realID is not being moved, and
// otherwise when its move ends (true) or ctx is done (its error).
func (n *Namespace) Wait(ctx context.Context, realID string) (waited bool, err error) {
	if n.anyHeld.Load() == 0 {
		return false, nil
	}
	n.mu.Lock()
	done, held := n.holds[realID]
	n.mu.Unlock()
	if !held {
		return false, nil
	}
	select {
	case <-done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// Enter waits while the session realID is held (see Wait) and then counts a
// request that may change it as under way until leave runs; a move holding
// the session waits for every such request to leave (Quiesce).
func (n *Namespace) Enter(ctx context.Context, realID string) (leave func(), waited bool, err error) {
	for {
		n.mu.Lock()
		done, held := n.holds[realID]
		if !held {
			n.writing[realID]++
			n.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					n.mu.Lock()
					if n.writing[realID]--; n.writing[realID] <= 0 {
						delete(n.writing, realID)
					}
					n.mu.Unlock()
					n.changed.Broadcast()
				})
			}, waited, nil
		}
		n.mu.Unlock()
		waited = true
		select {
		case <-done:
		case <-ctx.Done():
			return func() {}, true, ctx.Err()
		}
	}
}

// Quiesce waits until no request that may change any of the sessions is
// under way (see Enter), or ctx is done. Call it holding them.
func (n *Namespace) Quiesce(ctx context.Context, realIDs []string) error {
	stop := context.AfterFunc(ctx, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.changed.Broadcast()
	})
	defer stop()
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		busy := false
		for _, id := range realIDs {
			busy = busy || n.writing[id] > 0
		}
		if !busy {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n.changed.Wait()
	}
}

// SetDraining marks a worker as being drained, or no longer.
func (n *Namespace) SetDraining(worker string, on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.draining[worker] == on {
		return
	}
	if on {
		n.draining[worker] = true
		n.anyDraining.Add(1)
	} else {
		delete(n.draining, worker)
		n.anyDraining.Add(-1)
	}
}

// Draining reports whether a worker is being drained.
func (n *Namespace) Draining(worker string) bool {
	if n.anyDraining.Load() == 0 {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.draining[worker]
}

// AnyDraining reports whether some worker is being drained.
func (n *Namespace) AnyDraining() bool { return n.anyDraining.Load() > 0 }
