package idmap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

func newTestIndex(t *testing.T, ttl time.Duration) (*Index, *certmagic.FileStorage) {
	t.Helper()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	index, err := NewIndex(NewStore(storage, "test"), IndexConfig{CacheEntries: 1000, NegativeTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	return index, storage
}

func TestStoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, 0)
	m := Mapping{ClientID: "ses_c", RealID: "ses_r", Fields: Fields{"title": []byte(`"t"`)}}
	if err := index.Store.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := index.Store.Load(ctx, "ses_c")
	if err != nil || got.RealID != "ses_r" || string(got.Fields["title"]) != `"t"` {
		t.Fatalf("Load = %+v, %v", got, err)
	}
	if c, err := index.Store.ClientOf(ctx, "ses_r"); err != nil || c != "ses_c" {
		t.Fatalf("ClientOf = %q, %v", c, err)
	}
	if err := index.Store.Remove(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := index.Store.Load(ctx, "ses_c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Remove, Load err = %v", err)
	}
}

func TestStoreIgnoresAnIndexEntryWithoutItsRecord(t *testing.T) {
	// A crash between the two writes of Save leaves the index entry alone; it
	// must not make the real id look mapped.
	ctx := context.Background()
	index, storage := newTestIndex(t, 0)
	if err := storage.Store(ctx, "session_ids/test/real/ses_r", []byte("ses_c")); err != nil {
		t.Fatal(err)
	}
	if _, err := index.Store.ClientOf(ctx, "ses_r"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ClientOf with a dangling index entry: %v, want ErrNotFound", err)
	}
}

func TestIndexSeesASaveAfterCachingItsAbsence(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, time.Hour)
	if _, mapped, _ := index.RealOf(ctx, "ses_c"); mapped {
		t.Fatal("unknown id mapped")
	}
	if err := index.Save(ctx, Mapping{ClientID: "ses_c", RealID: "ses_r"}); err != nil {
		t.Fatal(err)
	}
	if real, mapped, err := index.RealOf(ctx, "ses_c"); !mapped || real != "ses_r" || err != nil {
		t.Fatalf("RealOf after Save = %q, %v, %v", real, mapped, err)
	}
	if err := index.Remove(ctx, Mapping{ClientID: "ses_c", RealID: "ses_r"}); err != nil {
		t.Fatal(err)
	}
	if _, mapped, _ := index.ClientOf(ctx, "ses_r"); mapped {
		t.Fatal("removed mapping still resolves")
	}
}

func TestLookupWaitsForCreatesInFlight(t *testing.T) {
	// The upstream announces a new session on its event stream before the
	// create returns: a lookup of that id must wait for the mapping.
	ctx := context.Background()
	index, _ := newTestIndex(t, time.Hour)
	end := index.BeginCreate()
	got := make(chan string)
	go func() {
		client, _, _ := index.ClientOf(ctx, "ses_new_real")
		got <- client
	}()
	time.Sleep(50 * time.Millisecond)
	if err := index.Save(ctx, Mapping{ClientID: "ses_mine", RealID: "ses_new_real"}); err != nil {
		t.Fatal(err)
	}
	end()
	if client := <-got; client != "ses_mine" {
		t.Fatalf("lookup during a create resolved to %q, want ses_mine", client)
	}
}

func TestLockSerialisesOneID(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, 0)
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := index.Lock(ctx, "ses_x")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			if n > most.Load() {
				most.Store(n)
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one id's lock at once", most.Load())
	}
}

func TestLockGivesUpWithTheContext(t *testing.T) {
	index, _ := newTestIndex(t, 0)
	unlock, err := index.Lock(context.Background(), "ses_x")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := index.Lock(ctx, "ses_x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want deadline exceeded", err)
	}
}

func TestCachedMappingsExpire(t *testing.T) {
	// Another instance sharing the storage may delete an id and create it
	// again, mapped to another real id; this instance must follow.
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	index, err := NewIndex(NewStore(storage, "test"), IndexConfig{TTL: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()
	if err := index.Save(ctx, Mapping{ClientID: "ses_c", RealID: "ses_r1"}); err != nil {
		t.Fatal(err)
	}
	other := NewStore(storage, "test") // the other instance
	if err := other.Remove(ctx, Mapping{ClientID: "ses_c", RealID: "ses_r1"}); err != nil {
		t.Fatal(err)
	}
	if err := other.Save(ctx, Mapping{ClientID: "ses_c", RealID: "ses_r2"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		real, _, _ := index.RealOf(ctx, "ses_c")
		if real == "ses_r2" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %q long after the TTL", real)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTheCacheHoldsAboutCacheEntriesMappings: cache_entries counts entries,
// so mappings well within it are answered from memory once looked up.
func TestTheCacheHoldsAboutCacheEntriesMappings(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, 0) // 1000 entries, both directions counted
	const n = 400
	for i := range n {
		m := Mapping{ClientID: fmt.Sprintf("ses_c%d", i), RealID: fmt.Sprintf("ses_r%d", i)}
		if err := index.Save(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	lookAll := func() {
		for i := range n {
			if _, ok, err := index.RealOf(ctx, fmt.Sprintf("ses_c%d", i)); !ok || err != nil {
				t.Fatalf("ses_c%d: %v %v", i, ok, err)
			}
		}
	}
	lookAll()
	time.Sleep(100 * time.Millisecond) // ristretto admits sets asynchronously
	var hits, lookups int
	index.OnLookup = func(hit bool) {
		lookups++
		if hit {
			hits++
		}
	}
	lookAll()
	if hits < n*9/10 {
		t.Fatalf("%d of %d lookups of %d mappings hit a cache of 1000 entries", hits, lookups, n)
	}
}
