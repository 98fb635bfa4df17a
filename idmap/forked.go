package idmap

import (
	"context"
	"errors"
	"fmt"
)

// The forks made through the handler are recorded, one empty record each:
//
//	<root>/<namespace>/forked/<real id>
//
// opencode copies a session's metadata to its forks, so the fork an
// interrupted fork under a chosen id made is found by elimination (the
// handler's adoptFork), and every fork the handler made and knows of must be
// out of the running: a fork without an id, and a fork under another id,
// are recorded the moment the upstream answers. A record is removed with its
// session when the session is deleted through the handler; records of
// sessions deleted behind its back stay (a few bytes each).

// SaveForked records that the handler made the upstream session realID by
// a fork.
func (s *Store) SaveForked(ctx context.Context, realID string) error {
	if !storable(realID) {
		return fmt.Errorf("fork %q: %w", realID, errUnstorable)
	}
	if err := s.put(ctx, s.key("forked", realID), []byte{}); err != nil {
		return fmt.Errorf("store fork %q: %w", realID, err)
	}
	return nil
}

// Forked reports whether the handler made the upstream session realID by a
// fork (see SaveForked).
func (s *Store) Forked(ctx context.Context, realID string) (bool, error) {
	if !storable(realID) {
		return false, nil
	}
	_, err := s.load(ctx, s.key("forked", realID))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// RemoveForked deletes the fork record of an upstream session, if any.
func (s *Store) RemoveForked(ctx context.Context, realID string) error {
	if !storable(realID) {
		return nil
	}
	return s.delete(ctx, s.key("forked", realID))
}
