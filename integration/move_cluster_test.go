package integration

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMoveOnTwoCaddys: two Caddys share Redis in front of two stock opencode
// workers; one moves a session while the other serves it.
func TestMoveOnTwoCaddys(t *testing.T) {
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED, NOT PASSED: redis-server is not installed, so moves on a cluster are UNTESTED. " +
			"Install Debian's redis-server (apt-get install redis-server), as .ci/run does.")
	}
	bin := findOrBuildClusterCaddy(t)
	redis := startRedis(t, redisBin)
	f := &fleet{model: startFakeModel(t)}
	for range 2 {
		f.workers = append(f.workers, startOpencode(t, f.model, ""))
	}
	// A cache_ttl far longer than the test: the other Caddy must learn of
	// a move from the move itself.
	node := func() *caddy {
		return startCaddyWith(t, bin, "Caddyfile.cluster.example", upstreamList(f.workers),
			"REDIS_ADDRESS="+redis, "CACHE_TTL=10m", "PLACEMENT=round_robin", "LB_TRY_DURATION="+lbTry.String())
	}
	a, b := node(), node()
	for _, w := range f.workers {
		w.waitHealthy(t)
	}
	run := time.Now().UnixNano()
	id := func(kind string) string { return fmt.Sprintf("ses_cmove_%s_%d", kind, run) }
	dial := func(i int) string { return strings.TrimPrefix(f.workers[i].URL, "http://") }
	prompt := func(base, sid, text string) error {
		r, err := post(base+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}})
		if err != nil {
			return err
		}
		if r.Status != 200 || !strings.Contains(string(r.Body), ModelReply) {
			return fmt.Errorf("prompt %q: %d %.300s", text, r.Status, r.Body)
		}
		return nil
	}
	create := func(t *testing.T, sid string) (from int) {
		t.Helper()
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": sid, "title": sid}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if err := prompt(a.URL, sid, "before "+sid); err != nil {
			t.Fatal(err)
		}
		// B has it cached, with its worker, for the next 10 minutes.
		if r := call(t, "GET", b.URL+"/session/"+sid+"/message", nil, ""); r.Status != 200 {
			t.Fatalf("GET through B: %d %s", r.Status, r.Body)
		}
		from, _ = f.holder(t, sid)
		return from
	}

	t.Run("both Caddys asked to move one session at once move it once; the other routes to the new worker at once", func(t *testing.T) {
		sid := id("race")
		from := create(t, sid)
		to := 1 - from
		answers := make([]response, 2)
		var wg sync.WaitGroup
		for i, c := range []*caddy{a, b} {
			wg.Go(func() {
				answers[i] = admin(t, c, "POST", "/session_ids/move", map[string]any{"session": sid, "to": dial(to)})
			})
		}
		wg.Wait()
		moved := 0
		for i, r := range answers {
			switch r.Status {
			case 200:
				moved++
			case http.StatusConflict:
			default:
				t.Fatalf("the move through %c: %d %s", "ab"[i], r.Status, r.Body)
			}
		}
		if moved != 1 {
			t.Fatalf("%d moves succeeded: %s / %s", moved, answers[0].Body, answers[1].Body)
		}
		if w, n := f.holder(t, sid); n != 1 || w != to {
			t.Fatalf("the session is on worker %d (held by %d) after the move to %d", w, n, to)
		}
		for _, c := range []*caddy{b, a} {
			messages := call(t, "GET", c.URL+"/session/"+sid+"/message", nil, "")
			if messages.Status != 200 || !strings.Contains(string(messages.Body), "before "+sid) {
				t.Fatalf("the messages through %s after the move: %d %.300s", c.URL, messages.Status, messages.Body)
			}
		}
		if err := prompt(b.URL, sid, "after "+sid); err != nil {
			t.Fatal("a prompt through the other Caddy after the move: ", err)
		}
		if w, n := f.holder(t, sid); n != 1 || w != to {
			t.Fatalf("the prompt through B went to worker %d (held by %d)", w, n)
		}
	})

	t.Run("prompts sent through the other Caddy during a move are all on the new worker", func(t *testing.T) {
		sid := id("during")
		from := create(t, sid)
		to := 1 - from
		stop := make(chan struct{})
		var acknowledged []string
		var failures []error
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Not naming the session: its id in a body is rewritten.
				text := fmt.Sprintf("prompt %d during the move", i)
				if err := prompt(b.URL, sid, text); err != nil {
					failures = append(failures, err)
					continue
				}
				acknowledged = append(acknowledged, text)
			}
		})
		time.Sleep(300 * time.Millisecond) // a prompt or two before the move
		r := admin(t, a, "POST", "/session_ids/move", map[string]any{"session": sid, "to": dial(to)})
		time.Sleep(500 * time.Millisecond) // and after it
		close(stop)
		wg.Wait()
		if r.Status != 200 {
			t.Fatalf("move: %d %s", r.Status, r.Body)
		}
		for _, err := range failures {
			t.Errorf("a prompt through B during the move failed: %v", err)
		}
		if len(acknowledged) < 3 {
			t.Fatalf("only %d prompts went through B during the move: the test proves little", len(acknowledged))
		}
		if w, n := f.holder(t, sid); n != 1 || w != to {
			t.Fatalf("the session is on worker %d (held by %d) after the move to %d", w, n, to)
		}
		onTarget := call(t, "GET", f.workers[to].URL+"/session/"+realIDOn(t, f.workers[to], sid)+"/message", nil, "")
		for _, text := range acknowledged {
			if !strings.Contains(string(onTarget.Body), text) {
				t.Errorf("the prompt %q, acknowledged through B during the move, is not on the new worker", text)
			}
		}
		t.Logf("%d prompts through B during the move, all on the new worker", len(acknowledged))
	})
}

// realIDOn is the real id of the session a worker holds for a client id.
func realIDOn(t *testing.T, w *opencode, clientID string) string {
	t.Helper()
	for _, s := range sessionsOn(t, w) {
		if s.ID == clientID || s.Metadata["clientSessionID"] == clientID {
			return s.ID
		}
	}
	t.Fatalf("%s holds no session for %s", w.URL, clientID)
	return ""
}
