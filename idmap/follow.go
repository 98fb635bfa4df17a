package idmap

import (
	"context"
	"errors"
	"time"
)

// followPoll is how often Follow reads storage while a create is under way.
const followPoll = 20 * time.Millisecond

// Follow waits for a create of clientID that another instance sharing the
// storage has under way, and makes its mapping visible to lookups here at
// once, dropping any "not mapped" cached for either id meanwhile. It
// reports whether clientID maps to realID.
//
// It exists for event streams: an instance sees the upstream's events of a
// new session (session.created, which names the client id in the session's
// metadata) before the instance creating it has stored the mapping, and
// without Follow it would remember the new real id as not mapped for
// NegativeTTL, passing it unrewritten. Follow waits only while a pending
// create of clientID is in storage, and at most wait from when that create
// started, so an event that merely claims a client id costs one or two
// storage reads, and one of a create whose instance died costs no wait.
func (x *Index) Follow(ctx context.Context, clientID, realID string, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		m, err := x.Store.Load(ctx, clientID)
		switch {
		case err == nil:
			if m.RealID != realID {
				return false, nil
			}
			x.forget(m)
			return true, nil
		case !errors.Is(err, ErrNotFound):
			return false, err
		}
		p, err := x.Store.LoadPending(ctx, clientID)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return false, nil // nothing under way
			}
			return false, err
		}
		// A create that started longer than wait ago is not finishing: its
		// instance died mid-create, and the create's retry will adopt it.
		if !p.Started.IsZero() && p.Started.Add(wait).Before(deadline) {
			deadline = p.Started.Add(wait)
		}
		if !time.Now().Before(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(followPoll):
		}
	}
}
