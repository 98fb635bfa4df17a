package idmap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// Index answers "which id stands for this one?" in both directions, from a
// ristretto cache in front of a Store, and serialises creates per id.
//
// Negative answers are cached too (for NegativeTTL), because responses carry
// many unmapped ids and each miss would otherwise read the storage. Two rules
// keep them from hiding a mapping made in this process:
//   - a create registers itself as in flight before it asks the upstream, and a
//     lookup that misses waits for the creates in flight at that moment to
//     finish before it concludes; upstreams announce a new session (on their
//     event streams) before the create returns, so without the wait that
//     announcement would go out with the real id;
//   - every change bumps a generation, and a negative answer is cached only if
//     no change happened while it was being looked up.
//
// Another process sharing the storage can make a mapping this one has cached
// as absent; that is seen once the negative entry expires.
type Index struct {
	Store       *Store
	TTL         time.Duration // how long a mapping is cached (0: until evicted)
	NegativeTTL time.Duration
	// OnLookup, if set, is told whether each lookup was answered by the cache.
	OnLookup func(hit bool)

	cache *ristretto.Cache[string, entry]
	locks *keyedMutex

	mu         sync.Mutex
	generation uint64
	inflight   map[*inflightCreate]struct{}
}

type entry struct {
	id     string
	worker string // for client ids: the worker of the mapping, if recorded
	mapped bool
}

type inflightCreate struct{ done chan struct{} }

// IndexConfig sizes an Index.
type IndexConfig struct {
	// CacheEntries is about how many ids (in either direction) the cache keeps.
	CacheEntries int64
	// TTL is how long a mapping is cached; 0 keeps it until it is evicted.
	TTL time.Duration
	// NegativeTTL is how long "not mapped" is remembered.
	NegativeTTL time.Duration
}

// NewIndex returns an Index over store.
func NewIndex(store *Store, cfg IndexConfig) (*Index, error) {
	if cfg.CacheEntries <= 0 {
		cfg.CacheEntries = 20_000
	}
	cache, err := ristretto.NewCache(&ristretto.Config[string, entry]{
		NumCounters: cfg.CacheEntries * 10,
		MaxCost:     cfg.CacheEntries,
		BufferItems: 64,
		// Every entry costs 1, so MaxCost counts entries. Without this,
		// ristretto adds its own per-entry overhead (about 56) to each cost
		// and the cache holds about 1/57 of CacheEntries.
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("create mapping cache: %w", err)
	}
	return &Index{
		Store:       store,
		TTL:         cfg.TTL,
		NegativeTTL: cfg.NegativeTTL,
		cache:       cache,
		locks:       newKeyedMutex(),
		inflight:    map[*inflightCreate]struct{}{},
	}, nil
}

// Close releases the cache.
func (x *Index) Close() { x.cache.Close() }

// RealOf returns the real id of a client id, if it is mapped.
func (x *Index) RealOf(ctx context.Context, clientID string) (string, bool, error) {
	e, err := x.resolve(ctx, "c:"+clientID, func() (entry, error) {
		m, err := x.Store.Load(ctx, clientID)
		return entry{id: m.RealID, worker: m.Worker}, err
	})
	return e.id, e.mapped, err
}

// Route returns the real id of a client id and the worker its mapping
// records (empty for mappings made before workers were recorded), if the id
// is mapped. It answers from the same cache entry as RealOf.
func (x *Index) Route(ctx context.Context, clientID string) (realID, worker string, mapped bool, err error) {
	e, err := x.resolve(ctx, "c:"+clientID, func() (entry, error) {
		m, err := x.Store.Load(ctx, clientID)
		return entry{id: m.RealID, worker: m.Worker}, err
	})
	return e.id, e.worker, e.mapped, err
}

// ClientOf returns the client id of a real id, if it is mapped.
func (x *Index) ClientOf(ctx context.Context, realID string) (string, bool, error) {
	e, err := x.resolve(ctx, "r:"+realID, func() (entry, error) {
		id, err := x.Store.ClientOf(ctx, realID)
		return entry{id: id}, err
	})
	return e.id, e.mapped, err
}

func (x *Index) resolve(ctx context.Context, key string, load func() (entry, error)) (entry, error) {
	e, hit := x.cache.Get(key)
	if x.OnLookup != nil {
		x.OnLookup(hit)
	}
	if hit {
		return e, nil
	}
	for waited := false; ; waited = true {
		x.mu.Lock()
		generation := x.generation
		var creates []*inflightCreate
		for c := range x.inflight {
			creates = append(creates, c)
		}
		x.mu.Unlock()

		e, err := load()
		if err == nil {
			e.mapped = true
			x.rememberFound(key, e, generation)
			return e, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return entry{}, err
		}
		if len(creates) == 0 || waited {
			x.rememberAbsent(key, generation)
			return entry{}, nil
		}
		for _, c := range creates {
			select {
			case <-c.done:
			case <-ctx.Done():
				return entry{}, ctx.Err()
			}
		}
	}
}

// WorkerOf returns the recorded worker of an upstream session that has no
// mapping naming one (see Store.SaveWorker).
func (x *Index) WorkerOf(ctx context.Context, realID string) (string, bool, error) {
	key := "w:" + realID
	if e, hit := x.cache.Get(key); hit {
		return e.worker, e.mapped, nil
	}
	x.mu.Lock()
	generation := x.generation
	x.mu.Unlock()
	worker, err := x.Store.LoadWorker(ctx, realID)
	switch {
	case err == nil:
		x.rememberFound(key, entry{worker: worker, mapped: true}, generation)
		return worker, true, nil
	case errors.Is(err, ErrNotFound):
		x.rememberAbsent(key, generation)
		return "", false, nil
	}
	return "", false, err
}

// RecordedWorker returns the worker the index records for an upstream
// session: its mapping's, else its worker record's; "" when neither names
// one, or they cannot be read.
func (x *Index) RecordedWorker(ctx context.Context, realID string) string {
	if clientID, mapped, err := x.ClientOf(ctx, realID); err == nil && mapped {
		if _, worker, _, _ := x.Route(ctx, clientID); worker != "" {
			return worker
		}
	}
	worker, _, _ := x.WorkerOf(ctx, realID)
	return worker
}

// SaveWorker records the worker of an upstream session and makes it visible
// to lookups at once.
func (x *Index) SaveWorker(ctx context.Context, realID, worker string) error {
	err := x.Store.SaveWorker(ctx, realID, worker)
	x.mu.Lock()
	x.generation++
	x.cache.Del("w:" + realID)
	if err == nil {
		x.cache.SetWithTTL("w:"+realID, entry{worker: worker, mapped: true}, 1, x.TTL)
	}
	x.mu.Unlock()
	return err
}

// MarkUnplaced remembers, for NegativeTTL, that no worker has an upstream
// session, so that requests for an id that exists nowhere do not ask every
// worker each time. Any change to the index forgets it.
func (x *Index) MarkUnplaced(realID string) {
	x.rememberAbsent("u:"+realID, x.currentGeneration())
}

// Unplaced reports whether MarkUnplaced is in force for realID.
func (x *Index) Unplaced(realID string) bool {
	_, hit := x.cache.Get("u:" + realID)
	return hit
}

func (x *Index) currentGeneration() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.generation
}

// RemoveWorker forgets the worker of an upstream session that is gone.
func (x *Index) RemoveWorker(ctx context.Context, realID string) error {
	err := x.Store.RemoveWorker(ctx, realID)
	x.mu.Lock()
	x.generation++
	x.cache.Del("w:" + realID)
	x.mu.Unlock()
	return err
}

// rememberFound caches what a lookup read, unless the index changed while
// it read (a Save, or a Refresh for another Caddy's change): the read may be
// older than the change.
func (x *Index) rememberFound(key string, e entry, generation uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.generation == generation {
		x.cache.SetWithTTL(key, e, 1, x.TTL)
	}
}

func (x *Index) rememberAbsent(key string, generation uint64) {
	if x.NegativeTTL <= 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.generation == generation {
		x.cache.SetWithTTL(key, entry{}, 1, x.NegativeTTL)
	}
}

// Lock serialises work on one client id: in the process first, then through
// the storage lock, which also excludes other Caddy instances sharing the
// storage. The returned function releases both.
func (x *Index) Lock(ctx context.Context, clientID string) (func(), error) {
	unlockLocal, err := x.locks.lock(ctx, clientID)
	if err != nil {
		return nil, err
	}
	if err := x.Store.Lock(ctx, clientID); err != nil {
		unlockLocal()
		return nil, fmt.Errorf("lock %q: %w", clientID, err)
	}
	return func() {
		// Unlock even if the request's context is gone.
		_ = x.Store.Unlock(context.WithoutCancel(ctx), clientID)
		unlockLocal()
	}, nil
}

// BeginCreate marks a create as in flight until the returned function runs;
// lookups that miss meanwhile wait for it (see Index).
func (x *Index) BeginCreate() (end func()) {
	c := &inflightCreate{done: make(chan struct{})}
	x.mu.Lock()
	x.inflight[c] = struct{}{}
	x.mu.Unlock()
	return func() {
		x.mu.Lock()
		delete(x.inflight, c)
		x.mu.Unlock()
		close(c.done)
	}
}

// Save stores a mapping and makes it visible to lookups at once.
func (x *Index) Save(ctx context.Context, m Mapping) error {
	if err := x.Store.Save(ctx, m); err != nil {
		x.forget(m)
		return err
	}
	x.forget(m)
	x.cache.SetWithTTL("c:"+m.ClientID, entry{id: m.RealID, worker: m.Worker, mapped: true}, 1, x.TTL)
	x.cache.SetWithTTL("r:"+m.RealID, entry{id: m.ClientID, mapped: true}, 1, x.TTL)
	return nil
}

// Remove deletes a mapping and makes the removal visible to lookups at once.
func (x *Index) Remove(ctx context.Context, m Mapping) error {
	err := x.Store.Remove(ctx, m)
	x.forget(m)
	return err
}

// Refresh drops what the cache knows of some client ids and upstream
// sessions (their mappings both ways and their recorded workers), so that
// the next lookup reads the storage: another Caddy changed them.
func (x *Index) Refresh(clientIDs, realIDs []string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.generation++
	for _, id := range clientIDs {
		x.cache.Del("c:" + id)
	}
	for _, id := range realIDs {
		x.cache.Del("r:" + id)
		x.cache.Del("w:" + id)
		x.cache.Del("u:" + id)
	}
}

// forget drops both directions of m from the cache and bumps the generation,
// so that no negative answer looked up before the change is cached after it.
func (x *Index) forget(m Mapping) {
	x.mu.Lock()
	x.generation++
	x.cache.Del("c:" + m.ClientID)
	x.cache.Del("r:" + m.RealID)
	x.mu.Unlock()
}
