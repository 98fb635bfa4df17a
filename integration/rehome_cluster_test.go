package integration

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisKeys lists the keys of Redis matching a pattern, in its wire
// protocol.
func redisKeys(tb testing.TB, addr, pattern string) []string {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "*2\r\n$4\r\nKEYS\r\n$%d\r\n%s\r\n", len(pattern), pattern)
	rd := bufio.NewReader(conn)
	line, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "*") {
		tb.Fatalf("redis KEYS: %q %v", line, err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	keys := make([]string, 0, n)
	for range n {
		if _, err := rd.ReadString('\n'); err != nil { // $<length>
			tb.Fatal(err)
		}
		key, err := rd.ReadString('\n')
		if err != nil {
			tb.Fatal(err)
		}
		keys = append(keys, strings.TrimSpace(key))
	}
	return keys
}

// journaledUpTo is the seq of the last event a session's journal holds in
// Redis (its chunks are named <first>-<last>), -1 for none.
func journaledUpTo(tb testing.TB, redis, realID string) float64 {
	tb.Helper()
	last := -1.0
	for _, key := range redisKeys(tb, redis, "caddy/session_ids/default/journal/"+realID+"/*-*") {
		_, rng, _ := strings.Cut(key, "/journal/"+realID+"/")
		_, end, _ := strings.Cut(rng, "-")
		if v, err := strconv.ParseFloat(end, 64); err == nil {
			last = max(last, v)
		}
	}
	return last
}

// TestRehomeOnTwoCaddys: two Caddys on one Redis both keep the journal and
// both re-home a worker that is down for rehome_after; its sessions are
// made again once, and the Caddy that did not do it sends their requests
// to the new worker at once (its cache_ttl is longer than the test).
func TestRehomeOnTwoCaddys(t *testing.T) {
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED, NOT PASSED: redis-server is not installed, so re-homes on a cluster are UNTESTED. " +
			"Install Debian's redis-server (apt-get install redis-server), as .ci/run does.")
	}
	bin := findOrBuildClusterCaddy(t)
	redis := startRedis(t, redisBin)
	f := &fleet{model: startFakeModel(t)}
	for range 2 {
		f.workers = append(f.workers, startOpencode(t, f.model, ""))
	}
	node := func() *caddy {
		return startCaddyWith(t, bin, "Caddyfile.cluster.example", upstreamList(f.workers),
			"REDIS_ADDRESS="+redis, "CACHE_TTL=10m", "PLACEMENT=first", "LB_TRY_DURATION="+lbTry.String(),
			"JOURNAL=on", "REHOME_AFTER=2s")
	}
	a, b := node(), node()
	for _, w := range f.workers {
		w.waitHealthy(t)
	}
	run := time.Now().UnixNano()
	var ids, words []string
	for i := range 3 {
		sid := fmt.Sprintf("ses_crehome_%d_%d", i, run)
		ids = append(ids, sid)
		words = append(words, fmt.Sprintf("words of session %d", i)) // an id in it would be rewritten
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": sid}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if r := call(t, "POST", a.URL+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": words[i]}}}, ""); r.Status != 200 {
			t.Fatalf("prompt: %d %.300s", r.Status, r.Body)
		}
		// B has it cached, with its worker, for the next 10 minutes.
		if r := call(t, "GET", b.URL+"/session/"+sid+"/message", nil, ""); r.Status != 200 {
			t.Fatalf("GET through B: %d %s", r.Status, r.Body)
		}
	}
	for _, sid := range ids {
		real := realIDOn(t, f.workers[0], sid)
		for deadline := time.Now().Add(20 * time.Second); journaledUpTo(t, redis, real) != lastSeq(t, f.workers[0], real); {
			if time.Now().After(deadline) {
				t.Fatalf("the journal of %s did not catch up", sid)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	f.workers[0].kill()
	lost := time.Now()
	for _, c := range []*caddy{b, a} {
		for i, sid := range ids {
			for deadline := time.Now().Add(60 * time.Second); ; {
				r := call(t, "GET", c.URL+"/session/"+sid+"/message", nil, "")
				if r.Status == 200 {
					if !strings.Contains(string(r.Body), words[i]) {
						t.Fatalf("the re-homed session lacks its turn: %.300s", r.Body)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s is still unavailable through %s: %d %s", sid, c.URL, r.Status, r.Body)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}
	t.Logf("every session answered through both Caddys %v after its worker was killed", time.Since(lost).Round(100*time.Millisecond))
	for _, sid := range ids {
		if w, n := f.holder(t, sid); w != 1 || n != 1 {
			t.Fatalf("%s is on worker %d, held by %d; want one copy, on the other worker", sid, w, n)
		}
	}
	series := `caddy_session_ids_rehomes_total{cause="worker_lost",namespace="default",outcome="rehomed"}`
	if done := metric(t, a, series) + metric(t, b, series); done != 3 {
		t.Fatalf("the two Caddys re-homed %v sessions; want each of the 3 once", done)
	}
	if r := call(t, "POST", b.URL+"/session/"+ids[0]+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "after"}}}, ""); r.Status != 200 {
		t.Fatalf("a prompt through B after the re-home: %d %.300s", r.Status, r.Body)
	}
	if body, _ := f.model.lastAgentBody.Load().(string); !strings.Contains(body, words[0]) {
		t.Fatalf("the model call after the re-home lacks the history: %.600s", body[strings.Index(body, `"messages"`):])
	}
}
