package moving

import (
	"context"
	"testing"
	"time"
)

func TestARequestForAMovingSessionWaitsForTheMove(t *testing.T) {
	n := Of(t.Name())
	if waited, err := n.Wait(context.Background(), "ses_a"); waited || err != nil {
		t.Fatalf("nothing held: waited=%v err=%v", waited, err)
	}
	release, ok := n.Hold("ses_a")
	if !ok {
		t.Fatal("could not hold")
	}
	if _, again := n.Hold("ses_a"); again {
		t.Fatal("a second move of one session was let through")
	}
	ended := make(chan bool)
	go func() {
		waited, _ := n.Wait(context.Background(), "ses_a")
		ended <- waited
	}()
	select {
	case <-ended:
		t.Fatal("the request did not wait for the move")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if !<-ended {
		t.Fatal("the request did not say it waited")
	}
	ctx, cancel := context.WithCancel(context.Background())
	release, _ = n.Hold("ses_a")
	defer release()
	cancel()
	if _, err := n.Wait(ctx, "ses_a"); err == nil {
		t.Fatal("a request whose client left kept waiting")
	}
}

func TestDrainingWorkers(t *testing.T) {
	n := Of(t.Name())
	n.SetDraining("w1", true)
	n.SetDraining("w1", true)
	if !n.Draining("w1") || n.Draining("w2") || !n.AnyDraining() {
		t.Fatal("draining state wrong")
	}
	n.SetDraining("w1", false)
	if n.Draining("w1") || n.AnyDraining() {
		t.Fatal("undrain did not stick")
	}
}

func TestAMoveWaitsForTheChangesUnderWay(t *testing.T) {
	n := Of(t.Name())
	leave, waited, err := n.Enter(context.Background(), "ses_a")
	if waited || err != nil {
		t.Fatalf("nothing held: %v %v", waited, err)
	}
	release, _ := n.Hold("ses_a")
	quiet := make(chan error)
	go func() { quiet <- n.Quiesce(context.Background(), []string{"ses_a"}) }()
	select {
	case <-quiet:
		t.Fatal("the move did not wait for the prompt under way")
	case <-time.After(50 * time.Millisecond):
	}
	leave()
	leave() // twice is once
	if err := <-quiet; err != nil {
		t.Fatal(err)
	}
	// A request that comes during the hold waits for it, then counts.
	entered := make(chan func())
	go func() {
		leave, waited, _ := n.Enter(context.Background(), "ses_a")
		if !waited {
			t.Error("the request did not wait for the hold")
		}
		entered <- leave
	}()
	time.Sleep(20 * time.Millisecond)
	release()
	(<-entered)()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	leave, _, _ = n.Enter(context.Background(), "ses_b")
	defer leave()
	if err := n.Quiesce(ctx, []string{"ses_b"}); err == nil {
		t.Fatal("Quiesce ignored its deadline")
	}
}
