package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/move"
)

// Event is one sync event, as POST /sync/history gives it.
type Event = move.Event

// Storage is the part of Caddy's storage a journal needs.
type Storage interface {
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, path string, recursive bool) ([]string, error)
	Stat(ctx context.Context, key string) (certmagic.KeyInfo, error)
}

// Store is the journals of one namespace.
type Store struct {
	storage   Storage
	namespace string
	prefix    string
	// Limit is the most bytes one session's journal may hold.
	Limit int64
}

// NewStore returns the journals of a namespace, each up to limit bytes.
func NewStore(storage Storage, namespace string, limit int64) *Store {
	return &Store{storage: storage, namespace: namespace, prefix: path.Join(idmap.StorageRoot, namespace, "journal"), Limit: limit}
}

var (
	// ErrFull: the journal passed its limit and holds nothing more.
	ErrFull = errors.New("the session's journal passed its size limit")
	// ErrGap: the events do not follow what the journal holds.
	ErrGap = errors.New("the events do not follow the journal")
)

const fullMarker = "full"

func (s *Store) dir(sessionID string) (string, error) {
	if !idmap.IsToken(sessionID) {
		return "", fmt.Errorf("journal of %q: not a session id", sessionID)
	}
	return path.Join(s.prefix, sessionID), nil
}

// chunk is one stored range of a journal.
type chunk struct {
	key         string
	first, last int64
}

// chunks lists a journal's chunks in order, and whether it is full.
func (s *Store) chunks(ctx context.Context, sessionID string) ([]chunk, bool, error) {
	dir, err := s.dir(sessionID)
	if err != nil {
		return nil, false, err
	}
	keys, err := s.storage.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list the journal of %s: %w", sessionID, err)
	}
	var out []chunk
	full := false
	for _, key := range keys {
		name := path.Base(key)
		if name == fullMarker {
			full = true
			continue
		}
		first, last, ok := strings.Cut(name, "-")
		a, errA := strconv.ParseInt(first, 10, 64)
		b, errB := strconv.ParseInt(last, 10, 64)
		if !ok || errA != nil || errB != nil || a > b {
			continue // not a chunk of this package's
		}
		out = append(out, chunk{key: key, first: a, last: b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first < out[j].first })
	return out, full, nil
}

// Position returns the seq of the last event a session's journal holds;
// ok is false when it holds none.
func (s *Store) Position(ctx context.Context, sessionID string) (seq int64, ok bool, err error) {
	chunks, full, err := s.chunks(ctx, sessionID)
	switch {
	case err != nil:
		return 0, false, err
	case full:
		return 0, false, ErrFull
	case len(chunks) == 0:
		return 0, false, nil
	}
	return nextSeq(chunks) - 1, true, nil
}

// nextSeq is the seq that follows the chunks' last event (0: no chunk).
func nextSeq(chunks []chunk) int64 {
	next := int64(0)
	for _, c := range chunks {
		next = max(next, c.last+1)
	}
	return next
}

// bytes is what the chunks take in the storage.
func (s *Store) bytes(ctx context.Context, chunks []chunk) (int64, error) {
	var size int64
	for _, c := range chunks {
		info, err := s.storage.Stat(ctx, c.key)
		if err != nil {
			return 0, err
		}
		size += info.Size
	}
	return size, nil
}

// Append adds events that follow what a session's journal holds, with no
// seq left out: events it holds already are skipped (two keepers may pull
// at once); ErrGap if they do not follow; ErrFull if the journal passed its
// limit (marked full then). See AppendAfter for a worker's answer.
func (s *Store) Append(ctx context.Context, sessionID string, events []Event) error {
	return s.AppendAfter(ctx, sessionID, noGaps, events)
}

// noGaps: the events must follow one another and the journal.
const noGaps = math.MinInt64

// AppendAfter adds the events a worker answered when asked for a session's
// events after seq after (-1: all of them). The answer is all the worker
// has, so a seq it leaves out is none of its (an upstream that keeps only
// each thing's last event, as the native server does): if the journal ends
// at after, the events are stored as the range that follows it, gaps and
// all. A journal that does not end at after was changed meanwhile (removed,
// or written by another keeper): ErrGap, unless the events still follow it.
func (s *Store) AppendAfter(ctx context.Context, sessionID string, after int64, events []Event) error {
	chunks, full, err := s.chunks(ctx, sessionID)
	if err != nil {
		return err
	}
	if full {
		return ErrFull
	}
	from := nextSeq(chunks)
	next, gaps := from, after == from-1
	var fresh []Event
	for _, e := range events {
		if e.AggregateID != sessionID {
			return fmt.Errorf("an event of %s in the journal of %s", e.AggregateID, sessionID)
		}
		if e.Seq < next {
			continue
		}
		if e.Seq != next && !gaps {
			return fmt.Errorf("%w: %s holds up to %d, the next event is %d", ErrGap, sessionID, next-1, e.Seq)
		}
		fresh = append(fresh, e)
		next = e.Seq + 1
	}
	if len(fresh) == 0 {
		return nil
	}
	used, err := s.bytes(ctx, chunks)
	if err != nil {
		return fmt.Errorf("size of the journal of %s: %w", sessionID, err)
	}
	raw, err := json.Marshal(fresh)
	if err != nil {
		return err
	}
	dir, _ := s.dir(sessionID)
	if used+int64(len(raw)) > s.Limit {
		if err := s.storage.Store(ctx, path.Join(dir, fullMarker), []byte{}); err != nil {
			return err
		}
		return ErrFull
	}
	// Named from what follows the journal: a range with the seqs the
	// worker left out, so that Load tells a lost chunk from them.
	key := path.Join(dir, fmt.Sprintf("%d-%d", from, fresh[len(fresh)-1].Seq))
	return s.storage.Store(ctx, key, raw)
}

// Load returns every event of a session's journal, in order: ErrFull for a
// journal that passed its limit, ErrGap if a chunk is missing.
func (s *Store) Load(ctx context.Context, sessionID string) ([]Event, error) {
	chunks, full, err := s.chunks(ctx, sessionID)
	if err != nil {
		return nil, err
	}
	if full {
		return nil, ErrFull
	}
	var events []Event
	next := int64(0)
	for _, c := range chunks {
		if c.last < next {
			continue // within what is loaded: two keepers wrote at once
		}
		if c.first > next {
			return nil, fmt.Errorf("%w: %s lacks events %d to %d", ErrGap, sessionID, next, c.first-1)
		}
		raw, err := s.storage.Load(ctx, c.key)
		if err != nil {
			return nil, fmt.Errorf("load the journal of %s: %w", sessionID, err)
		}
		var part []Event
		if err := json.Unmarshal(raw, &part); err != nil {
			return nil, fmt.Errorf("decode the journal of %s: %w", sessionID, err)
		}
		for _, e := range part {
			if e.Seq >= next { // chunks may overlap
				events = append(events, e)
			}
		}
		next = c.last + 1
	}
	return events, nil
}

const homeName = "home"

// Home is where a journal's session was last seen: the worker, and that
// worker's working directory (GET /path), which a re-home rewrites.
type Home struct {
	Worker    string `json:"worker"`
	Directory string `json:"directory"`
}

// SetHome records where a session is.
func (s *Store) SetHome(ctx context.Context, sessionID string, h Home) error {
	dir, err := s.dir(sessionID)
	if err != nil {
		return err
	}
	raw, _ := json.Marshal(h)
	return s.storage.Store(ctx, path.Join(dir, homeName), raw)
}

// HomeOf returns where a session was last seen.
func (s *Store) HomeOf(ctx context.Context, sessionID string) (Home, error) {
	var h Home
	dir, err := s.dir(sessionID)
	if err != nil {
		return h, err
	}
	raw, err := s.storage.Load(ctx, path.Join(dir, homeName))
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(raw, &h)
}

// Sessions lists the sessions that have a journal.
func (s *Store) Sessions(ctx context.Context) ([]string, error) {
	keys, err := s.storage.List(ctx, s.prefix, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, key := range keys {
		if id := path.Base(key); idmap.IsToken(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Unrehomable lists the sessions last seen on a worker whose journal is
// full: if the worker is lost, they cannot be made again.
func (s *Store) Unrehomable(ctx context.Context, worker string) ([]string, error) {
	ids, err := s.Sessions(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if home, err := s.HomeOf(ctx, id); err != nil || home.Worker != worker {
			continue
		}
		if _, full, err := s.chunks(ctx, id); err == nil && full {
			out = append(out, id)
		}
	}
	return out, nil
}

// Remove deletes a session's journal, chunk by chunk (not every storage
// deletes a folder with what is in it).
func (s *Store) Remove(ctx context.Context, sessionID string) error {
	chunks, _, err := s.chunks(ctx, sessionID)
	if err != nil {
		return err
	}
	dir, _ := s.dir(sessionID)
	keys := []string{path.Join(dir, fullMarker), path.Join(dir, homeName)}
	for _, c := range chunks {
		keys = append(keys, c.key)
	}
	for _, key := range append(keys, dir) {
		if err := s.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete the journal of %s: %w", sessionID, err)
		}
	}
	return nil
}

// Size returns the bytes a session's journal holds.
func (s *Store) Size(ctx context.Context, sessionID string) (int64, error) {
	chunks, _, err := s.chunks(ctx, sessionID)
	if err != nil {
		return 0, err
	}
	return s.bytes(ctx, chunks)
}
