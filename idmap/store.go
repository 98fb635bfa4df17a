package idmap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"time"
)

// Storage is the part of Caddy's storage interface (certmagic.Storage) that
// the mapping needs. Load must return an error wrapping fs.ErrNotExist for a
// missing key, as certmagic requires of every storage module.
type Storage interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// Mapping ties a client-chosen id to the upstream's real id.
type Mapping struct {
	ClientID string    `json:"client_id"`
	RealID   string    `json:"real_id"`
	Fields   Fields    `json:"fields"`
	Created  time.Time `json:"created"`
	// Worker is the upstream (its dial address, as reverse_proxy names it)
	// that holds the session. Mappings written before workers were recorded
	// have none; their worker is found by asking the workers (see Placement).
	Worker string `json:"worker,omitempty"`
}

// Pending records a create that was about to reach the upstream. It is written
// before the upstream is asked and removed once the mapping is stored, so a
// pending record found later means an upstream session may exist for the id
// without a mapping, and must be looked for before creating another one.
type Pending struct {
	ClientID string    `json:"client_id"`
	Fields   Fields    `json:"fields"`
	Query    string    `json:"query"` // the create's raw query: where to look for the session
	Started  time.Time `json:"started"`
	// Worker is where the create was sent: the only place its session can be.
	Worker string `json:"worker,omitempty"`
	// Attempt is a random name of this create attempt, sent upstream in the
	// session's metadata with the client id: the session it finds later
	// under both is the one this attempt made, and no other (opencode's
	// fork copies metadata, so a fork of an earlier session of the id
	// carries the id too, but another attempt). Empty in records written
	// before attempts were named.
	Attempt string `json:"attempt,omitempty"`
	// RealID is, for a fork under a chosen id, the id of the fork the
	// upstream made, written the moment it answered: a retry adopts that
	// session, and no other.
	RealID string `json:"real_id,omitempty"`
}

// NewAttempt names a create attempt (Pending.Attempt).
func NewAttempt() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Store keeps mappings in a Storage under one namespace:
//
//	<root>/<namespace>/client/<client id>   Mapping, the commit point
//	<root>/<namespace>/real/<real id>       the client id, an index
//	<root>/<namespace>/pending/<client id>  Pending
//	<root>/<namespace>/deleted/<client id>  Tombstone: deleted, not created again
//	<root>/<namespace>/worker/<real id>     the worker of a session without a
//	                                        worker in a mapping (see SaveWorker)
//	<root>/<namespace>/forked/<real id>     a fork the handler made (see SaveForked)
//
// A mapping is written index first and record last, and removed record first:
// the client record is the single commit point, and an index entry without
// its record is ignored, so a crash between the two writes never makes a real
// id look mapped to a client id that is not.
type Store struct {
	storage Storage
	prefix  string

	// Observe, if set, is told how long each storage operation took ("load",
	// "store", "delete", "lock", "unlock").
	Observe func(op string, took time.Duration)
}

// timed runs one storage operation and reports its duration.
func (s *Store) timed(op string, f func() error) error {
	start := time.Now()
	err := f()
	if s.Observe != nil {
		s.Observe(op, time.Since(start))
	}
	return err
}

// StorageRoot is the top-level storage folder of this module.
const StorageRoot = "session_ids"

// NewStore returns a Store for namespace in storage.
func NewStore(storage Storage, namespace string) *Store {
	return &Store{storage: storage, prefix: path.Join(StorageRoot, namespace)}
}

// ErrNotFound is returned for an id without a mapping or pending record.
var ErrNotFound = errors.New("not found")

var errUnstorable = errors.New("not an id of the token shape, which alone names storage keys")

func (s *Store) key(kind, id string) string { return s.prefix + "/" + kind + "/" + id }

// storable reports whether an id may name a storage key: only an id of the
// token shape (prefix and id characters) can, so that nothing a client puts
// in a path (".." or "a/b") ever reaches the storage as part of a key.
// Every id the handler stores has that shape; any other is never found.
func storable(id string) bool { return IsToken(id) }

// Load returns the mapping of a client id.
func (s *Store) Load(ctx context.Context, clientID string) (Mapping, error) {
	var m Mapping
	if !storable(clientID) {
		return m, ErrNotFound
	}
	err := s.loadJSON(ctx, s.key("client", clientID), &m)
	return m, err
}

// ClientOf returns the client id mapped to a real id.
func (s *Store) ClientOf(ctx context.Context, realID string) (string, error) {
	if !storable(realID) {
		return "", ErrNotFound
	}
	raw, err := s.load(ctx, s.key("real", realID))
	if err != nil {
		return "", err
	}
	clientID := string(raw)
	m, err := s.Load(ctx, clientID)
	if errors.Is(err, ErrNotFound) || err == nil && m.RealID != realID {
		return "", ErrNotFound // a leftover index entry: its record was never committed or is gone
	}
	if err != nil {
		return "", err
	}
	return clientID, nil
}

// Save stores a mapping durably: when it returns nil, the mapping survives a
// crash of this process.
func (s *Store) Save(ctx context.Context, m Mapping) error {
	if !storable(m.ClientID) || !storable(m.RealID) {
		return fmt.Errorf("mapping %q → %q: %w", m.ClientID, m.RealID, errUnstorable)
	}
	if err := s.put(ctx, s.key("real", m.RealID), []byte(m.ClientID)); err != nil {
		return fmt.Errorf("store index of %q: %w", m.ClientID, err)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := s.put(ctx, s.key("client", m.ClientID), raw); err != nil {
		return fmt.Errorf("store mapping of %q: %w", m.ClientID, err)
	}
	// The id exists again: it is no longer deleted. A tombstone that stays
	// (the delete failed) blocks only create_missing, which a mapped id
	// never needs.
	_ = s.delete(ctx, s.key("deleted", m.ClientID))
	return nil
}

// Tombstone is what is kept of a client id deleted through the handler, so
// that create_missing does not bring it back: only an explicit create does.
type Tombstone struct {
	ClientID string    `json:"client_id"`
	RealID   string    `json:"real_id"`
	Deleted  time.Time `json:"deleted"`
}

// SaveTombstone records that a client id was deleted.
func (s *Store) SaveTombstone(ctx context.Context, t Tombstone) error {
	if !storable(t.ClientID) {
		return fmt.Errorf("tombstone of %q: %w", t.ClientID, errUnstorable)
	}
	raw, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := s.put(ctx, s.key("deleted", t.ClientID), raw); err != nil {
		return fmt.Errorf("store tombstone of %q: %w", t.ClientID, err)
	}
	return nil
}

// Deleted reports whether a client id was deleted through the handler and
// not created again since.
func (s *Store) Deleted(ctx context.Context, clientID string) (bool, error) {
	if !storable(clientID) {
		return false, nil
	}
	_, err := s.load(ctx, s.key("deleted", clientID))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Remove deletes a mapping, its record first.
func (s *Store) Remove(ctx context.Context, m Mapping) error {
	if err := s.delete(ctx, s.key("client", m.ClientID)); err != nil {
		return fmt.Errorf("delete mapping of %q: %w", m.ClientID, err)
	}
	if err := s.delete(ctx, s.key("real", m.RealID)); err != nil {
		return fmt.Errorf("delete index of %q: %w", m.ClientID, err)
	}
	return nil
}

// LoadPending returns the pending create of a client id.
func (s *Store) LoadPending(ctx context.Context, clientID string) (Pending, error) {
	var p Pending
	if !storable(clientID) {
		return p, ErrNotFound
	}
	err := s.loadJSON(ctx, s.key("pending", clientID), &p)
	return p, err
}

// SavePending records a create about to be sent upstream.
func (s *Store) SavePending(ctx context.Context, p Pending) error {
	if !storable(p.ClientID) {
		return fmt.Errorf("pending create of %q: %w", p.ClientID, errUnstorable)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := s.put(ctx, s.key("pending", p.ClientID), raw); err != nil {
		return fmt.Errorf("store pending create of %q: %w", p.ClientID, err)
	}
	return nil
}

// RemovePending deletes the pending record of a client id, if any.
func (s *Store) RemovePending(ctx context.Context, clientID string) error {
	return s.delete(ctx, s.key("pending", clientID))
}

// LoadWorker returns the recorded worker of an upstream session.
func (s *Store) LoadWorker(ctx context.Context, realID string) (string, error) {
	if !storable(realID) {
		return "", ErrNotFound
	}
	raw, err := s.load(ctx, s.key("worker", realID))
	return string(raw), err
}

// SaveWorker records which worker holds an upstream session that has no
// mapping naming its worker: one created without an id, forked, made on a
// worker directly, or mapped before workers were recorded. Upstream ids are
// never reused, so a record outliving its session misleads no one.
func (s *Store) SaveWorker(ctx context.Context, realID, worker string) error {
	if !storable(realID) {
		return fmt.Errorf("worker of %q: %w", realID, errUnstorable)
	}
	if err := s.put(ctx, s.key("worker", realID), []byte(worker)); err != nil {
		return fmt.Errorf("store worker of %q: %w", realID, err)
	}
	return nil
}

// RemoveWorker deletes the worker record of an upstream session, if any.
func (s *Store) RemoveWorker(ctx context.Context, realID string) error {
	return s.delete(ctx, s.key("worker", realID))
}

// Lock takes the storage lock of a client id, which excludes every other
// process sharing the storage. Callers serialise within the process first
// (see Index.Lock): storage locks poll, and are slow under contention.
func (s *Store) Lock(ctx context.Context, clientID string) error {
	return s.timed("lock", func() error { return s.storage.Lock(ctx, s.key("lock", clientID)) })
}

// Unlock releases the storage lock of a client id.
func (s *Store) Unlock(ctx context.Context, clientID string) error {
	return s.timed("unlock", func() error { return s.storage.Unlock(ctx, s.key("lock", clientID)) })
}

func (s *Store) put(ctx context.Context, key string, value []byte) error {
	return s.timed("store", func() error { return s.storage.Store(ctx, key, value) })
}

func (s *Store) load(ctx context.Context, key string) ([]byte, error) {
	var raw []byte
	err := s.timed("load", func() (err error) {
		raw, err = s.storage.Load(ctx, key)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", key, err)
	}
	return raw, nil
}

func (s *Store) loadJSON(ctx context.Context, key string, v any) error {
	raw, err := s.load(ctx, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}

// list returns the keys in a folder of the storage: none for a folder that
// does not exist.
func (s *Store) list(ctx context.Context, folder string) ([]string, error) {
	var keys []string
	err := s.timed("list", func() (err error) {
		keys, err = s.storage.List(ctx, folder, false)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return keys, err
}

func (s *Store) delete(ctx context.Context, key string) error {
	err := s.timed("delete", func() error { return s.storage.Delete(ctx, key) })
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
