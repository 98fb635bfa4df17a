package idmap

import (
	"context"
	"sync"
)

// keyedMutex serialises work per key within the process. Waiting respects the
// context, so a client that gives up does not queue forever behind a slow
// create.
type keyedMutex struct {
	mu    sync.Mutex
	slots map[string]*slot
}

type slot struct {
	token chan struct{} // holds one value while the key is free
	refs  int
}

func newKeyedMutex() *keyedMutex { return &keyedMutex{slots: map[string]*slot{}} }

// lock waits for key and returns its unlock function.
func (k *keyedMutex) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	s := k.slots[key]
	if s == nil {
		s = &slot{token: make(chan struct{}, 1)}
		s.token <- struct{}{}
		k.slots[key] = s
	}
	s.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		if s.refs--; s.refs == 0 {
			delete(k.slots, key)
		}
		k.mu.Unlock()
	}
	select {
	case <-s.token:
		return func() { s.token <- struct{}{}; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
