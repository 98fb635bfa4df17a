package idmap

import (
	"context"
	"testing"
	"time"
)

func TestFollow(t *testing.T) {
	ctx := context.Background()

	t.Run("waits for another instance's create under way, then its mapping is visible here at once", func(t *testing.T) {
		here, storage := newTestIndex(t, time.Hour) // negative answers would last an hour
		there, err := NewIndex(NewStore(storage, "test"), IndexConfig{CacheEntries: 1000})
		if err != nil {
			t.Fatal(err)
		}
		defer there.Close()
		if err := there.Store.SavePending(ctx, Pending{ClientID: "ses_client", Started: time.Now()}); err != nil {
			t.Fatal(err)
		}
		// The upstream's event arrives here before the other instance stores the mapping.
		if _, mapped, _ := here.ClientOf(ctx, "ses_real"); mapped {
			t.Fatal("mapped before it was saved")
		}
		go func() {
			time.Sleep(150 * time.Millisecond)
			_ = there.Save(ctx, Mapping{ClientID: "ses_client", RealID: "ses_real"})
			_ = there.Store.RemovePending(ctx, "ses_client")
		}()
		start := time.Now()
		ok, err := here.Follow(ctx, "ses_client", "ses_real", 5*time.Second)
		if !ok || err != nil {
			t.Fatalf("Follow = %v, %v", ok, err)
		}
		if waited := time.Since(start); waited < 100*time.Millisecond || waited > 2*time.Second {
			t.Fatalf("Follow returned after %v; the mapping was saved after 150ms", waited)
		}
		if client, mapped, _ := here.ClientOf(ctx, "ses_real"); !mapped || client != "ses_client" {
			t.Fatalf("after Follow, ClientOf(ses_real) = %q, %v: the cached 'not mapped' was kept", client, mapped)
		}
	})

	t.Run("does not wait for a client id with no create under way", func(t *testing.T) {
		here, _ := newTestIndex(t, time.Hour)
		start := time.Now()
		if ok, err := here.Follow(ctx, "ses_claimed", "ses_real", 5*time.Second); ok || err != nil {
			t.Fatalf("Follow = %v, %v", ok, err)
		}
		if time.Since(start) > 500*time.Millisecond {
			t.Fatalf("waited %v", time.Since(start))
		}
	})

	t.Run("a client id mapped to another real id is not followed", func(t *testing.T) {
		here, _ := newTestIndex(t, time.Hour)
		_ = here.Save(ctx, Mapping{ClientID: "ses_client", RealID: "ses_other"})
		if ok, _ := here.Follow(ctx, "ses_client", "ses_real", time.Second); ok {
			t.Fatal("followed a claim that storage contradicts")
		}
	})

	t.Run("does not wait for a create that started longer than wait ago: its instance died", func(t *testing.T) {
		here, _ := newTestIndex(t, time.Hour)
		_ = here.Store.SavePending(ctx, Pending{ClientID: "ses_orphan", Started: time.Now().Add(-time.Minute)})
		start := time.Now()
		if ok, _ := here.Follow(ctx, "ses_orphan", "ses_real", 5*time.Second); ok || time.Since(start) > 500*time.Millisecond {
			t.Fatalf("followed, or waited %v for a create a minute old", time.Since(start))
		}
	})

	t.Run("gives up after wait on a create that never finishes", func(t *testing.T) {
		here, _ := newTestIndex(t, time.Hour)
		_ = here.Store.SavePending(ctx, Pending{ClientID: "ses_stuck", Started: time.Now()})
		start := time.Now()
		if ok, _ := here.Follow(ctx, "ses_stuck", "ses_real", 200*time.Millisecond); ok {
			t.Fatal("followed a create that never finished")
		}
		if waited := time.Since(start); waited < 200*time.Millisecond || waited > time.Second {
			t.Fatalf("gave up after %v, want about 200ms", waited)
		}
	})
}
