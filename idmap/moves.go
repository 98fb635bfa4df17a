package idmap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// What moves of sessions between workers keep in the storage:
//
//	<root>/<namespace>/moved/<real id>   Moved: the session left a worker
//	<root>/<namespace>/draining          the workers being drained, a JSON list
//
// and the lock of a move, MoveLockName.

// MoveLockName is the name under which Index.Lock serialises the moves of
// one upstream session, on every Caddy sharing the storage.
func MoveLockName(realID string) string {
	sum := sha256.Sum256([]byte(realID))
	return "move/" + hex.EncodeToString(sum[:])
}

// Moved records that a session was moved off a worker, whose copy is then
// deleted: that deletion is not the session's, and its session.deleted
// event is not passed to clients.
type Moved struct {
	RealID string    `json:"real_id"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	At     time.Time `json:"at"`
}

// SaveMoved records a move.
func (s *Store) SaveMoved(ctx context.Context, m Moved) error {
	if !storable(m.RealID) {
		return fmt.Errorf("move of %q: %w", m.RealID, errUnstorable)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.put(ctx, s.key("moved", m.RealID), raw)
}

// LoadMoved returns the last move of a session, or ErrNotFound.
func (s *Store) LoadMoved(ctx context.Context, realID string) (Moved, error) {
	var m Moved
	if !storable(realID) {
		return m, ErrNotFound
	}
	err := s.loadJSON(ctx, s.key("moved", realID), &m)
	return m, err
}

// RemoveMoved forgets the move of a session: a deletion of it from now on
// is the session's own.
func (s *Store) RemoveMoved(ctx context.Context, realID string) error {
	if !storable(realID) {
		return nil
	}
	return s.delete(ctx, s.key("moved", realID))
}

// LoadDraining returns the workers being drained.
func (s *Store) LoadDraining(ctx context.Context) ([]string, error) {
	var workers []string
	err := s.loadJSON(ctx, s.prefix+"/draining", &workers)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return workers, err
}

// SaveDraining stores the workers being drained.
func (s *Store) SaveDraining(ctx context.Context, workers []string) error {
	raw, err := json.Marshal(workers)
	if err != nil {
		return err
	}
	return s.put(ctx, s.prefix+"/draining", raw)
}
