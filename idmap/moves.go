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
//	<root>/<namespace>/moving/<real id>  Move: a move under way
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
	// Undone: the copy deleted is a failed move's, on its target; the
	// session never left From.
	Undone bool `json:"undone,omitempty"`
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

// Move is a move of a session under way, in the storage for as long as it
// lasts (moving/<real id of its root>): every Caddy sharing the storage
// holds the requests for its sessions while it copies, and routes them to
// the new worker once it has switched.
type Move struct {
	RealID string `json:"real_id"`
	From   string `json:"from"`
	To     string `json:"to"`
	// Token names this attempt: the switch is written only while the
	// record still carries it, so a mover that stalled and lost its lock to
	// another cannot finish over the other's move.
	Token string `json:"token"`
	// Sessions are the real ids of the session and its children; Clients
	// the client ids of those that are mapped.
	Sessions []string `json:"sessions"`
	Clients  []string `json:"clients,omitempty"`
	// Switched says the sessions are recorded on To: requests go there.
	Switched bool `json:"switched,omitempty"`
	// Renewed is when the mover last said it is alive; a record not renewed
	// for MoveRecordStale is a mover's that crashed, and holds nothing.
	Renewed time.Time `json:"renewed"`
}

// MoveRecordStale is how long a move record lives without being renewed.
const MoveRecordStale = 10 * time.Second

// Stale reports whether the mover of m is gone.
func (m Move) Stale(now time.Time) bool { return now.Sub(m.Renewed) > MoveRecordStale }

// SaveMove writes a move record.
func (s *Store) SaveMove(ctx context.Context, m Move) error {
	if !storable(m.RealID) {
		return fmt.Errorf("move of %q: %w", m.RealID, errUnstorable)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.put(ctx, s.key("moving", m.RealID), raw)
}

// LoadMove returns the move record of a session, or ErrNotFound.
func (s *Store) LoadMove(ctx context.Context, realID string) (Move, error) {
	var m Move
	if !storable(realID) {
		return m, ErrNotFound
	}
	err := s.loadJSON(ctx, s.key("moving", realID), &m)
	return m, err
}

// RemoveMove deletes the move record of a session.
func (s *Store) RemoveMove(ctx context.Context, realID string) error {
	if !storable(realID) {
		return nil
	}
	return s.delete(ctx, s.key("moving", realID))
}

// Moves returns the move records in the storage: the moves under way, and
// those of movers that crashed (Stale).
func (s *Store) Moves(ctx context.Context) ([]Move, error) {
	keys, err := s.list(ctx, s.prefix+"/moving")
	if err != nil {
		return nil, fmt.Errorf("list the moves: %w", err)
	}
	moves := make([]Move, 0, len(keys))
	for _, key := range keys {
		var m Move
		switch err := s.loadJSON(ctx, key, &m); {
		case errors.Is(err, ErrNotFound): // ended meanwhile
		case err != nil:
			return nil, err
		default:
			moves = append(moves, m)
		}
	}
	return moves, nil
}

// What each Caddy following the moves says of itself (followers/<instance>):
// that it is there, so that a mover knows whether it must wait for others
// to hold a session's requests. Written every FollowerEvery.
type Follower struct {
	Instance string    `json:"instance"`
	Seen     time.Time `json:"seen"`
}

// FollowerEvery is how often a Caddy says it follows; a record older than
// three times that is a Caddy that is gone.
const FollowerEvery = 2 * time.Second

// SaveFollower records that a Caddy follows the moves.
func (s *Store) SaveFollower(ctx context.Context, f Follower) error {
	if !isInstance(f.Instance) {
		return fmt.Errorf("follower %q: not a Caddy's instance name (hex)", f.Instance)
	}
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return s.put(ctx, s.key("followers", f.Instance), raw)
}

// RemoveFollower forgets a Caddy that stops following.
func (s *Store) RemoveFollower(ctx context.Context, instance string) error {
	if !isInstance(instance) {
		return nil
	}
	return s.delete(ctx, s.key("followers", instance))
}

// OtherFollowers reports whether a Caddy other than instance has said it
// follows within the last three FollowerEvery.
func (s *Store) OtherFollowers(ctx context.Context, instance string) (bool, error) {
	keys, err := s.list(ctx, s.prefix+"/followers")
	if err != nil {
		return false, fmt.Errorf("list the followers: %w", err)
	}
	for _, key := range keys {
		var f Follower
		if s.loadJSON(ctx, key, &f) != nil || f.Instance == instance {
			continue
		}
		if time.Since(f.Seen) < 3*FollowerEvery {
			return true, nil
		}
	}
	return false, nil
}

// isInstance reports whether a name is a Caddy's instance name, hex digits,
// which alone may name a follower's key.
func isInstance(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := range len(name) {
		if c := name[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// A session re-homed off a lost worker (rehomed/<real id>, a Moved): if that
// worker comes back with its copy, the copy is stale and is deleted.

// SaveRehomed records a re-home.
func (s *Store) SaveRehomed(ctx context.Context, m Moved) error {
	if !storable(m.RealID) {
		return fmt.Errorf("re-home of %q: %w", m.RealID, errUnstorable)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.put(ctx, s.key("rehomed", m.RealID), raw)
}

// Rehomed lists the re-homes whose stale copies may still be out there.
func (s *Store) Rehomed(ctx context.Context) ([]Moved, error) {
	keys, err := s.list(ctx, s.prefix+"/rehomed")
	if err != nil {
		return nil, err
	}
	var out []Moved
	for _, key := range keys {
		var m Moved
		if s.loadJSON(ctx, key, &m) == nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// RemoveRehomed forgets a re-home once its stale copy is gone.
func (s *Store) RemoveRehomed(ctx context.Context, realID string) error {
	if !storable(realID) {
		return nil
	}
	return s.delete(ctx, s.key("rehomed", realID))
}
