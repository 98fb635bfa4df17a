package caddymodule

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
	"github.com/sessionid/caddy-sessionid/lbpolicy"
)

// fleetSessions is how many mapped sessions the routing benchmark spreads
// over the workers: the scale the fleet issue asks about.
const fleetSessions = 100_000

// BenchmarkFleetRouting measures what routing one request to its session's
// worker costs, with 1, 4, 16 and 64 workers and 100,000 mapped sessions
// spread at random over them: the handler's part (the session segment of
// the path, the mapping and its worker from the index, the worker's
// membership of the pool) and the policy's (lb_policy session_ids selecting
// that worker), and the handler learning from the route as the request ends.
// The index is the module's own (idmap.Index with the handler's default
// cache size and TTLs) over Caddy's file storage (on tmpfs where there is
// one, see seedDir), warmed by one lookup of
// every session; a mapping the cache does not hold is read from its file, as
// in Caddy. Two request mixes per pool:
//
//   - sessions=100000: each op asks for the next session of a random
//     permutation of all of them, so the cache's size decides how many
//     lookups read storage;
//   - hot=1000: the ops cycle through 1,000 of them, which the cache holds,
//     so the op is the routing alone.
//
// Both report the share of lookups the cache answered (hit%). The cost
// should not grow with the number of workers.
//
//	go test ./caddymodule -run '^$' -bench FleetRouting -benchmem
func BenchmarkFleetRouting(b *testing.B) {
	for _, workers := range []int{1, 4, 16, 64} {
		f := newFleetRouting(b, workers, fleetSessions)
		b.Run(fmt.Sprintf("workers=%d/sessions=%d", workers, fleetSessions), func(b *testing.B) { f.run(b, len(f.paths)) })
		b.Run(fmt.Sprintf("workers=%d/hot=%d", workers, fleetHot), func(b *testing.B) { f.run(b, fleetHot) })
		f.close()
	}
}

// fleetHot is how many sessions the hot mix cycles through.
const fleetHot = 1_000

// fleetRouting is a handler and a policy in front of a pool of workers, and
// the sessions they route.
type fleetRouting struct {
	h        *Handler
	policy   *lbpolicy.SessionSelection
	dials    []string // the workers' dial addresses
	pool     reverseproxy.UpstreamPool
	paths    []string // GET /session/{client id}, in the order requested
	want     []string // the worker of each path
	dir      string
	upstream atomic.Int64 // requests that reached next: there should be none
	hits     atomic.Int64 // lookups the index's cache answered
	misses   atomic.Int64 // and those it read from storage
}

// newFleetRouting seeds sessions mappings, each with a worker drawn at
// random from a pool of workers, into a fresh file storage, and builds the
// handler and policy over them as Provision would.
func newFleetRouting(b *testing.B, workers, sessions int) *fleetRouting {
	b.Helper()
	dir, err := os.MkdirTemp(seedDir(), "fleet-routing-")
	if err != nil {
		b.Fatal(err)
	}
	f := &fleetRouting{dir: dir, policy: provisionedPolicy(b)}
	for i := range workers {
		f.dials = append(f.dials, fmt.Sprintf("10.0.%d.%d:4096", i/256, i%256))
	}
	rng := rand.New(rand.NewPCG(uint64(workers), 1))
	ids := make([]string, sessions)
	workerOf := make([]string, sessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("ses_fleet%07d", i)
		workerOf[i] = f.dials[rng.IntN(workers)]
	}
	if err := seedFleet(dir, ids, workerOf); err != nil {
		b.Fatal(err)
	}

	store := idmap.NewStore(&certmagic.FileStorage{Path: dir}, "bench")
	store.Observe = observeStorage("bench")
	// The cache sized for the sessions in use, as an operator running
	// 100,000 of them would set cache_entries: what is measured is routing,
	// not storage reads.
	index, err := idmap.NewIndex(store, idmap.IndexConfig{CacheEntries: 2 * fleetSessions, TTL: defaultCacheTTL, NegativeTTL: defaultNegativeTTL})
	if err != nil {
		b.Fatal(err)
	}
	metrics := observeLookup("bench")
	index.OnLookup = func(hit bool) {
		metrics(hit)
		if hit {
			f.hits.Add(1)
		} else {
			f.misses.Add(1)
		}
	}
	f.h = &Handler{Mode: ModeMapping, Namespace: "bench", Events: &events.Config{Off: true}}
	setUp(b, f.h, index)
	f.pool = upstreamtest.Pool(f.dials...) // the fleet learns it from the policy's first report

	for _, i := range rng.Perm(sessions) {
		f.paths = append(f.paths, "/session/"+ids[i])
		f.want = append(f.want, workerOf[i])
	}
	// Warm the cache as traffic would: every session once.
	r, w := newRequest(), httptest.NewRecorder()
	for i := range f.paths {
		if got := f.route(r, w, i); got != f.want[i] {
			b.Fatalf("warm-up: %s routed to %q, want %q", f.paths[i], got, f.want[i])
		}
	}
	if n := f.upstream.Load(); n > 0 {
		b.Fatalf("warm-up: %d requests of the handler's own reached the workers; every worker is recorded", n)
	}
	return f
}

// provisionedPolicy is lb_policy session_ids as Caddy provisions it (its
// fallback, random, is never asked: every session has its worker).
func provisionedPolicy(b *testing.B) *lbpolicy.SessionSelection {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	policy := new(lbpolicy.SessionSelection)
	if err := policy.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return policy
}

func (f *fleetRouting) close() {
	f.h.index.Close()
	_ = os.RemoveAll(f.dir)
}

// newRequest is a request as Caddy's server hands it to the handler: with
// its variables.
func newRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/session/x", nil)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

// route routes r, its path set to f.paths[i], as ServeHTTP and
// reverse_proxy do, and returns the worker the policy selected.
func (f *fleetRouting) route(r *http.Request, w http.ResponseWriter, i int) string {
	r.URL.Path = f.paths[i]
	rt := upstream.Attach(r, f.h.observe)
	if !f.h.route(w, r, f.next(), rt) {
		return "answered by the handler"
	}
	u := f.policy.Select(f.pool, r, w)
	rt.Finish(r)
	if u == nil {
		return ""
	}
	return u.Dial
}

// next stands for reverse_proxy on the handler's own requests (asking the
// workers for a session it has no worker for); the benchmark counts them.
func (f *fleetRouting) next() caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		f.upstream.Add(1)
		w.WriteHeader(http.StatusNotFound)
		return nil
	})
}

// run routes b.N requests for the first n sessions of f.paths in turn.
func (f *fleetRouting) run(b *testing.B, n int) {
	// One request whose path changes, as a fresh request per op would
	// measure net/http rather than routing.
	r, w := newRequest(), httptest.NewRecorder()
	for k := range n { // the hot mix's sessions into the cache
		f.route(r, w, k)
	}
	f.hits.Store(0)
	f.misses.Store(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % n
		if got := f.route(r, w, k); got != f.want[k] {
			b.Fatalf("%s routed to %q, want %q", f.paths[k], got, f.want[k])
		}
	}
	b.StopTimer()
	hits, misses := f.hits.Load(), f.misses.Load()
	b.ReportMetric(100*float64(hits)/float64(max(hits+misses, 1)), "hit%")
	if n := f.upstream.Load(); n > 0 {
		b.Fatalf("%d requests of the handler's own reached the workers; every worker is recorded", n)
	}
}

// seedFleet writes a mapping of ids[i] (to a new real id) on workers[i]
// under dir, with idmap's own Store over Caddy's file storage but without
// fsync, concurrently: 200,000 files in seconds rather than minutes. The
// files are where certmagic.FileStorage reads them.
func seedFleet(dir string, ids, workers []string) error {
	store := idmap.NewStore(noSyncStorage{&certmagic.FileStorage{Path: dir}}, "bench")
	created := time.Now().UTC()
	fields := idmap.Fields{"title": []byte(`"bench"`)}
	var next atomic.Int64
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				m := idmap.Mapping{ClientID: ids[i], RealID: idmap.NewID("ses", true), Fields: fields, Created: created, Worker: workers[i]}
				if err := store.Save(context.Background(), m); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// seedDir is where the seeded storage goes: tmpfs (/dev/shm) when there is
// one, as the disk is not what is measured and 200,000 files take minutes to
// write and remove on a slow one; the default temporary folder otherwise.
func seedDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return ""
}

// noSyncStorage is file storage that writes without an atomic rename and
// fsync, for seeding only.
type noSyncStorage struct{ *certmagic.FileStorage }

func (s noSyncStorage) Store(_ context.Context, key string, value []byte) error {
	name := s.Filename(key)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	return os.WriteFile(name, value, 0o600)
}
