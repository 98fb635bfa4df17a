package relocation

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
)

func newTestRelocator(t *testing.T, namespace string) *Relocator {
	t.Helper()
	index, err := idmap.NewIndex(idmap.NewStore(&certmagic.FileStorage{Path: t.TempDir()}, namespace), idmap.IndexConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	return &Relocator{Namespace: namespace, Index: index, Logger: zap.NewNop()}
}

func TestAStalledMoverCannotSwitchASessionAnotherMoveTookOver(t *testing.T) {
	ctx := context.Background()
	rl := newTestRelocator(t, t.Name())
	m := idmap.Mapping{ClientID: "ses_client", RealID: "ses_real", Worker: "w1:1"}
	if err := rl.Index.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	stalled, err := rl.announce(ctx, "ses_real", "w1:1", "w2:2", []string{"ses_real"})
	if err != nil {
		t.Fatal(err)
	}
	defer rl.endRecord(stalled)
	if stored, _ := rl.Index.Store.LoadMove(ctx, "ses_real"); stored.Token != stalled.Token || len(stored.Clients) != 1 || stored.Clients[0] != "ses_client" {
		t.Fatalf("the record of the move: %+v", stored)
	}

	// Its lock ran out; another mover took the session to w3.
	other := stalled.Move
	other.Token, other.To, other.Renewed = "another", "w3:3", time.Now()
	if err := rl.Index.Store.SaveMove(ctx, other); err != nil {
		t.Fatal(err)
	}
	err = rl.switchWorker(ctx, "ses_real", "w2:2", stalled.fence)
	if !errors.Is(err, ErrTakenOver) {
		t.Fatalf("the stalled mover switched: %v", err)
	}
	if _, worker, _, _ := rl.Index.Route(ctx, "ses_client"); worker != "w1:1" {
		t.Fatalf("the mapping names %s after a fenced switch", worker)
	}
	stalled.switched(ctx)
	rl.endRecord(stalled)
	if stored, err := rl.Index.Store.LoadMove(ctx, "ses_real"); err != nil || stored.Token != "another" || stored.Switched {
		t.Fatalf("the stalled mover changed the other's record: %+v %v", stored, err)
	}
}

func TestEveryCaddyHoldsTheSessionsOfAMoveUntilItSwitches(t *testing.T) {
	ctx := context.Background()
	rl := newTestRelocator(t, t.Name())
	m := idmap.Mapping{ClientID: "ses_client", RealID: "ses_real", Worker: "w1:1"}
	if err := rl.Index.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	state := moving.Of(t.Name())
	// Another Caddy's move, in the shared storage.
	record := idmap.Move{RealID: "ses_real", From: "w1:1", To: "w2:2", Token: "elsewhere", Sessions: []string{"ses_real"}, Clients: []string{"ses_client"}, Renewed: time.Now()}
	if err := rl.Index.Store.SaveMove(ctx, record); err != nil {
		t.Fatal(err)
	}
	rl.follow()
	waited := make(chan string)
	go func() {
		_, _ = state.Wait(ctx, "ses_real")
		_, worker, _, _ := rl.Index.Route(ctx, "ses_client")
		waited <- worker
	}()
	select {
	case w := <-waited:
		t.Fatalf("a request went on (to %s) while another Caddy copied the session", w)
	case <-time.After(50 * time.Millisecond):
	}
	// The other Caddy switches the mapping in the storage: this one's cache
	// still says w1 until it follows the switch.
	m.Worker = "w2:2"
	if err := rl.Index.Store.Save(ctx, m); err != nil {
		t.Fatal(err)
	}
	record.Switched = true
	if err := rl.Index.Store.SaveMove(ctx, record); err != nil {
		t.Fatal(err)
	}
	rl.follow()
	if w := <-waited; w != "w2:2" {
		t.Fatalf("after the switch the request went to %s", w)
	}

	// A mover that crashed holds nothing for long.
	record.Token, record.Switched, record.Renewed = "crashed", false, time.Now().Add(-idmap.MoveRecordStale-time.Second)
	if err := rl.Index.Store.SaveMove(ctx, record); err != nil {
		t.Fatal(err)
	}
	rl.follow()
	if held, _ := state.Wait(ctx, "ses_real"); held {
		t.Fatal("a stale record held requests")
	}
}

func TestAMoverAloneWaitsForNoOtherCaddy(t *testing.T) {
	ctx := context.Background()
	rl := newTestRelocator(t, t.Name())
	rl.follow() // this Caddy says it follows
	alone, err := rl.announce(ctx, "ses_a", "w1:1", "w2:2", []string{"ses_a"})
	if err != nil {
		t.Fatal(err)
	}
	rl.endRecord(alone)
	if !alone.alone {
		t.Fatal("a mover with no other Caddy following waits for others")
	}
	if err := rl.Index.Store.SaveFollower(ctx, idmap.Follower{Instance: "0123456789abcdef", Seen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	accompanied, err := rl.announce(ctx, "ses_a", "w1:1", "w2:2", []string{"ses_a"})
	if err != nil {
		t.Fatal(err)
	}
	rl.endRecord(accompanied)
	if accompanied.alone {
		t.Fatal("a mover did not see the other Caddy following")
	}
}

func TestAMoveDoesNotOverwriteALiveMoversRecord(t *testing.T) {
	ctx := context.Background()
	rl := newTestRelocator(t, t.Name())
	live := idmap.Move{RealID: "ses_a", From: "w1:1", To: "w2:2", Token: "alive", Sessions: []string{"ses_a"}, Renewed: time.Now()}
	if err := rl.Index.Store.SaveMove(ctx, live); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.announce(ctx, "ses_a", "w1:1", "w3:3", []string{"ses_a"}); err == nil {
		t.Fatal("a second move overwrote the record of a mover that is alive")
	}
	live.Renewed = time.Now().Add(-idmap.MoveRecordStale - time.Second)
	if err := rl.Index.Store.SaveMove(ctx, live); err != nil {
		t.Fatal(err)
	}
	taken, err := rl.announce(ctx, "ses_a", "w1:1", "w3:3", []string{"ses_a"})
	if err != nil {
		t.Fatalf("a move did not take over from a mover that is gone: %v", err)
	}
	rl.endRecord(taken)
}

func TestAMoverWhoseRecordWentStaleStops(t *testing.T) {
	ctx := context.Background()
	rl := newTestRelocator(t, t.Name())
	r, err := rl.announce(ctx, "ses_a", "w1:1", "w2:2", []string{"ses_a"})
	if err != nil {
		t.Fatal(err)
	}
	defer rl.endRecord(r)
	r.saved.Store(time.Now().Add(-ownStale - time.Second).UnixNano()) // it paused; the others gave it up
	if err := rl.switchWorker(ctx, "ses_a", "w2:2", r.fence); !errors.Is(err, ErrTakenOver) {
		t.Fatalf("a mover whose record went stale switched: %v", err)
	}
}

func TestAConfigThatFailsToLoadGivesTheNamespaceBack(t *testing.T) {
	old, failed := newTestRelocator(t, t.Name()), newTestRelocator(t, t.Name())
	Register(old)
	defer Unregister(old)
	Register(failed)
	if rl, _ := current(t.Name()); rl != failed {
		t.Fatal("the newest config is not the namespace's")
	}
	Unregister(failed) // its provisioning failed: Caddy cleans it up
	if rl, _ := current(t.Name()); rl != old {
		t.Fatal("the config still serving lost its namespace")
	}
}
