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
		n = &Namespace{holds: map[string]chan struct{}{}, draining: map[string]bool{}}
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
