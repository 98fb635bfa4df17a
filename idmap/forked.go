package idmap

import (
	"context"
	"errors"
	"fmt"
	"path"
)

// The forks made through the handler are recorded, one empty record each:
//
//	<root>/<namespace>/forked/<real id>               its parent's real id
//	<root>/<namespace>/forks/<parent real id>/<real id>   empty: the parent's forks
//
// opencode copies a session's metadata to its forks, so the fork an
// interrupted fork under a chosen id made is found by elimination (the
// handler's adoptFork), and every fork the handler made and knows of must be
// out of the running: a fork without an id, and a fork under another id,
// are recorded the moment the upstream answers. A record is removed with its
// session when the session is deleted through the handler; records of
// sessions deleted behind its back stay (a few bytes each).

// SaveForked records that the handler made the upstream session realID by
// a fork of the session parentID (a real id; "" when unknown), and lists it
// among the parent's forks (ForksOf).
func (s *Store) SaveForked(ctx context.Context, realID, parentID string) error {
	if !storable(realID) {
		return fmt.Errorf("fork %q: %w", realID, errUnstorable)
	}
	if !storable(parentID) {
		parentID = ""
	}
	if err := s.put(ctx, s.key("forked", realID), []byte(parentID)); err != nil {
		return fmt.Errorf("store fork %q: %w", realID, err)
	}
	if parentID != "" {
		if err := s.put(ctx, s.key("forks", parentID+"/"+realID), []byte{}); err != nil {
			return fmt.Errorf("store fork %q of %q: %w", realID, parentID, err)
		}
	}
	return nil
}

// ForksOf returns the real ids of the forks of an upstream session that
// the handler made (SaveForked), deleted ones included.
func (s *Store) ForksOf(ctx context.Context, parentID string) ([]string, error) {
	if !storable(parentID) {
		return nil, nil
	}
	keys, err := s.list(ctx, s.key("forks", parentID))
	if err != nil {
		return nil, fmt.Errorf("list the forks of %s: %w", parentID, err)
	}
	forks := make([]string, 0, len(keys))
	for _, key := range keys {
		if id := path.Base(key); storable(id) {
			forks = append(forks, id)
		}
	}
	return forks, nil
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
	if parent, err := s.load(ctx, s.key("forked", realID)); err == nil && storable(string(parent)) {
		if err := s.delete(ctx, s.key("forks", string(parent)+"/"+realID)); err != nil {
			return err
		}
	}
	return s.delete(ctx, s.key("forked", realID))
}
