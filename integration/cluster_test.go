package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTwoNodeCluster is Caddyfile.cluster.example as a specification: two
// Caddy instances (built by xcaddy-cluster.sh) share one Redis through
// Caddy's storage, in front of one stock opencode. Each node has its own
// data folder, so Redis is all they share.
func TestTwoNodeCluster(t *testing.T) {
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("SKIPPED, NOT PASSED: redis-server is not installed, so running several Caddy instances on " +
			"shared storage is UNTESTED. Install Debian's redis-server (apt-get install redis-server), as .ci/run does.")
	}
	bin := findOrBuildClusterCaddy(t)
	redis := startRedis(t, redisBin)
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	const cacheTTL = 2 * time.Second
	node := func() *caddy {
		return startCaddyWith(t, bin, "Caddyfile.cluster.example", oc.URL, "REDIS_ADDRESS="+redis, "CACHE_TTL="+cacheTTL.String())
	}
	a, b := node(), node()
	oc.waitHealthy(t)
	id := func(name string) string { return fmt.Sprintf("ses_cluster_%s_%d", name, time.Now().UnixNano()) }

	t.Run("40 concurrent creates of one id through both nodes make one upstream session", func(t *testing.T) {
		clientID := id("concurrent")
		answers := createConcurrently(t, []string{a.URL, b.URL}, clientID, 40)
		created := 0
		for i, r := range answers {
			if s, ok := sessionOf(r); !ok || s.ID != clientID {
				t.Fatalf("create %d (node %c) answered %d: %s", i, "ab"[i%2], r.Status, r.Body)
			}
			if r.Header.Get("Idempotent-Replayed") == "" {
				created++
			}
		}
		if created != 1 {
			t.Errorf("%d answers say they created the session, want 1 (the others are replays)", created)
		}
		if n := len(upstreamSessionsOf(t, oc, clientID)); n != 1 {
			t.Fatalf("upstream has %d sessions for one id", n)
		}
	})

	t.Run("the mapping lives in Redis, not on either node's disk", func(t *testing.T) {
		clientID := id("where")
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": clientID}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if !redisExists(t, redis, "caddy/session_ids/default/client/"+clientID) {
			t.Fatal("Redis has no mapping record for the id")
		}
		for _, n := range []*caddy{a, b} {
			if _, err := os.Stat(filepath.Join(n.DataDir, "caddy", "session_ids")); !os.IsNotExist(err) {
				t.Fatalf("a node keeps mappings in its file storage (%v)", err)
			}
		}
	})

	t.Run("a session created through one node is the same session through the other", func(t *testing.T) {
		clientID := id("across")
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": clientID, "title": "across"}, ""); r.Status != 200 {
			t.Fatalf("create through A: %d %s", r.Status, r.Body)
		}
		real := realID(t, oc, clientID)

		got, ok := sessionThrough(t, b, clientID)
		if s, _ := sessionOf(got); !ok || s.Title != "across" {
			t.Fatalf("GET through B: %d %s", got.Status, got.Body)
		}
		prompt := call(t, "POST", b.URL+"/session/"+clientID+"/prompt_async",
			map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hello"}}}, "")
		if prompt.Status != 204 {
			t.Fatalf("prompt_async through B: %d %s", prompt.Status, prompt.Body)
		}
		for _, n := range []*caddy{b, a} {
			messages := waitForReply(t, n.URL, clientID)
			if strings.Contains(messages, real) || !strings.Contains(messages, `"sessionID":"`+clientID+`"`) {
				t.Fatalf("messages through %s carry the wrong session id: %s", n.URL, messages)
			}
		}
		if list := call(t, "GET", b.URL+"/session", nil, ""); !bytes.Contains(list.Body, []byte(`"id":"`+clientID+`"`)) ||
			bytes.Contains(list.Body, []byte(real)) {
			t.Fatalf("the session list through B does not show the client id: %s", list.Body)
		}
	})

	t.Run("an event stream resumes on the node that served it; another node says resync, never a silent gap", func(t *testing.T) {
		client := openEvents(t, a.URL+"/event", "")
		client.next(t)
		clientID := id("events")
		// Made through the other node: A's stream sees opencode's events of
		// it before B has stored the mapping, and follows B's create.
		createSession(t, b.URL, clientID)
		real := realID(t, oc, clientID)
		seen := client.until(t, 30*time.Second, func(ev sse) bool { return strings.Contains(ev.data, clientID) })
		last := seen.ID()
		client.cancel()
		promptAsync(t, b.URL, clientID, "hello")

		onA := openEvents(t, a.URL+"/event", last)
		onA.next(t)
		for _, ev := range append(seen, onA.until(t, 120*time.Second, idleOf(clientID))...) {
			if strings.Contains(ev.data, "session_ids.resync") {
				t.Fatalf("resuming on the node that gave the id out: %s", ev.data)
			}
			if strings.Contains(ev.data, real) {
				t.Fatalf("A's stream carried the real id of a session made through B: %s", ev.data)
			}
		}
		onB := openEvents(t, b.URL+"/event", last)
		onB.next(t)
		if ev := onB.next(t); !strings.Contains(ev.data, `"type":"session_ids.resync"`) || !strings.Contains(ev.data, `"reason":"unknown"`) {
			t.Fatalf("resuming on another node: %+v", ev)
		}
	})

	t.Run("a node that has looked an id up as unmapped sees another node's mapping once negative_ttl has passed", func(t *testing.T) {
		// README, Known limits. Each poll is a round trip to opencode, so
		// the bound allows for more than the TTL itself.
		const negativeTTL = 2 * time.Second // the default; Caddyfile.cluster.example keeps it
		clientID := id("negative")
		if r := call(t, "GET", b.URL+"/session/"+clientID, nil, ""); r.Status != 404 {
			t.Fatalf("GET of an unknown id through B: %d %s", r.Status, r.Body)
		}
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": clientID}, ""); r.Status != 200 {
			t.Fatalf("create through A: %d %s", r.Status, r.Body)
		}
		created := time.Now()
		for call(t, "GET", b.URL+"/session/"+clientID, nil, "").Status != 200 {
			if time.Since(created) > negativeTTL+10*time.Second {
				t.Fatalf("B still does not see the mapping %v after it was made", time.Since(created))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("B saw the mapping %v after A made it", time.Since(created).Round(time.Millisecond))
	})

	t.Run("a reloaded node keeps creating and resolving", func(t *testing.T) {
		before := id("before_reload")
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": before}, ""); r.Status != 200 {
			t.Fatalf("create before the reload: %d %s", r.Status, r.Body)
		}
		reload := startProcess(t, "caddy reload", repoRoot, a.env, bin, "reload", "--config", "Caddyfile.cluster.example", "--force")
		<-reload.done
		if reload.cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("caddy reload: %s", reload.out.String())
		}
		if r := call(t, "GET", a.URL+"/session/"+before, nil, ""); r.Status != 200 {
			t.Fatalf("an id made before the reload: %d %s", r.Status, r.Body)
		}
		after := id("after_reload")
		if r := call(t, "POST", a.URL+"/session", map[string]any{"id": after}, ""); r.Status != 200 {
			t.Fatalf("a create after the reload: %d %s", r.Status, r.Body)
		}
	})

	t.Run("a delete and re-create through one node is followed by the other within cache_ttl", func(t *testing.T) {
		clientID := id("recreated")
		call(t, "POST", a.URL+"/session", map[string]any{"id": clientID, "title": "first"}, "")
		if r := call(t, "GET", a.URL+"/session/"+clientID, nil, ""); r.Status != 200 { // now cached on A
			t.Fatalf("GET through A: %d %s", r.Status, r.Body)
		}
		if r := call(t, "DELETE", b.URL+"/session/"+clientID, nil, ""); r.Status != 200 {
			t.Fatalf("delete through B: %d %s", r.Status, r.Body)
		}
		if r := call(t, "POST", b.URL+"/session", map[string]any{"id": clientID, "title": "second"}, ""); r.Status != 200 {
			t.Fatalf("re-create through B: %d %s", r.Status, r.Body)
		}
		changed := time.Now()
		for {
			r := call(t, "GET", a.URL+"/session/"+clientID, nil, "")
			var s session
			if r.Status == 200 && json.Unmarshal(r.Body, &s) == nil && s.Title == "second" {
				break
			}
			if time.Since(changed) > cacheTTL+10*time.Second {
				t.Fatalf("A still answers %d %s long after cache_ttl", r.Status, r.Body)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("A followed after %v", time.Since(changed).Round(time.Millisecond))
	})

	t.Run("a session deleted through one node stays deleted for reads on the other, with create_missing, in both modes", func(t *testing.T) {
		for _, mode := range []string{"mapping", "direct"} {
			env := []string{"REDIS_ADDRESS=" + redis, "CACHE_TTL=" + cacheTTL.String(), "CREATE_MISSING=true", "MODE=" + mode, "NAMESPACE=deleted-" + mode}
			one := startCaddyWith(t, bin, "Caddyfile.cluster.example", oc.URL, env...)
			other := startCaddyWith(t, bin, "Caddyfile.cluster.example", oc.URL, env...)
			clientID := id("deleted_" + mode)
			if r := call(t, "POST", one.URL+"/session", map[string]any{"id": clientID, "title": "to delete"}, ""); r.Status != 200 {
				t.Fatalf("%s: create: %d %s", mode, r.Status, r.Body)
			}
			if r := call(t, "GET", other.URL+"/session/"+clientID, nil, ""); r.Status != 200 { // cached on the other node
				t.Fatalf("%s: read through the other node: %d %s", mode, r.Status, r.Body)
			}
			if r := call(t, "DELETE", one.URL+"/session/"+clientID, nil, ""); r.Status != 200 {
				t.Fatalf("%s: delete: %d %s", mode, r.Status, r.Body)
			}
			before := upstreamSessionCount(t, oc)
			deadline := time.Now().Add(cacheTTL + time.Second) // reads while the other node has it cached, and after
			for time.Now().Before(deadline) {
				if r := call(t, "GET", other.URL+"/session/"+clientID, nil, ""); r.Status != 404 {
					t.Fatalf("%s: a read through the other node after the delete: %d %s, want 404", mode, r.Status, r.Body)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if after := upstreamSessionCount(t, oc); after != before {
				t.Fatalf("%s: reads of a deleted id made %d upstream sessions", mode, after-before)
			}
			if r := call(t, "POST", other.URL+"/session", map[string]any{"id": clientID, "title": "made again"}, ""); r.Status != 200 || r.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("%s: the explicit create through the other node: %d %s", mode, r.Status, r.Body)
			}
			if r := call(t, "GET", one.URL+"/session/"+clientID+"/message", nil, ""); r.Status != 200 {
				t.Fatalf("%s: a read through the first node after it was made again: %d %s", mode, r.Status, r.Body)
			}
		}
	})

	t.Run("kill -9 of a node loses no acknowledged create, and the survivor carries on", func(t *testing.T) {
		const title = "killed"
		var (
			mu         sync.Mutex
			acked      []string // answered 200 with the id before the kill
			unanswered []string // no answer: in flight when the node died
			seq        atomic.Int64
			stop       = make(chan struct{})
			wg         sync.WaitGroup
		)
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					clientID := id(fmt.Sprintf("kill%d", seq.Add(1)))
					r, err := post(a.URL+"/session", map[string]any{"id": clientID, "title": title})
					s, ok := sessionOf(r)
					mu.Lock()
					switch {
					case err != nil:
						unanswered = append(unanswered, clientID)
					case ok && s.ID == clientID:
						acked = append(acked, clientID)
					default:
						t.Errorf("create %s through A answered %d: %s", clientID, r.Status, r.Body)
					}
					mu.Unlock()
					if err != nil {
						return // the node is gone
					}
				}
			}()
		}
		ackedSoFar := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
		for deadline := time.Now().Add(60 * time.Second); ackedSoFar() < 30; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("only %d creates through A answered within 60 s", ackedSoFar())
			}
		}
		a.kill() // while creates are in flight
		close(stop)
		wg.Wait()
		t.Logf("A killed with -9 after %d acknowledged creates, %d in flight", len(acked), len(unanswered))

		for _, clientID := range acked {
			if r, ok := sessionThrough(t, b, clientID); !ok {
				t.Fatalf("acknowledged %s, through B after the kill: %d %s", clientID, r.Status, r.Body)
			}
			if n := len(upstreamSessionsOf(t, oc, clientID)); n != 1 {
				t.Fatalf("upstream has %d sessions for %s", n, clientID)
			}
		}

		// A create cut off by the kill may have reached the upstream, and A
		// may have died holding the id's lock: the retry through B waits for
		// that lock to expire and adopts what A left, never making a second
		// session.
		retryStart := time.Now()
		for _, clientID := range unanswered {
			r := call(t, "POST", b.URL+"/session", map[string]any{"id": clientID, "title": title}, "")
			if s, ok := sessionOf(r); !ok || s.ID != clientID {
				t.Fatalf("retry of %s (in flight at the kill) through B: %d %s", clientID, r.Status, r.Body)
			}
			if n := len(upstreamSessionsOf(t, oc, clientID)); n != 1 {
				t.Fatalf("upstream has %d sessions for %s, retried after the kill", n, clientID)
			}
		}
		t.Logf("%d creates cut off by the kill retried through B in %v", len(unanswered), time.Since(retryStart).Round(time.Millisecond))

		var fresh []string
		for i := range 5 {
			clientID := id(fmt.Sprintf("survivor%d", i))
			if r := call(t, "POST", b.URL+"/session", map[string]any{"id": clientID, "title": title}, ""); r.Status != 200 {
				t.Fatalf("create through the survivor: %d %s", r.Status, r.Body)
			}
			fresh = append(fresh, clientID)
		}

		a.start()
		for _, clientID := range append(append(acked, unanswered...), fresh...) {
			if r, ok := sessionThrough(t, a, clientID); !ok {
				t.Fatalf("%s through the restarted A: %d %s", clientID, r.Status, r.Body)
			}
		}
		replay := call(t, "POST", a.URL+"/session", map[string]any{"id": fresh[0], "title": title}, "")
		if replay.Status != 200 || replay.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("a create through the restarted A of an id made through B: %d %s", replay.Status, replay.Body)
		}
	})

	t.Run("control: without shared storage the same creates make two upstream sessions", func(t *testing.T) {
		// Two nodes of Caddyfile.example, each with its own file storage: the
		// check above would catch a storage that is not shared.
		x, y := startCaddy(t, oc), startCaddy(t, oc)
		clientID := id("control")
		for i, r := range createConcurrently(t, []string{x.URL, y.URL}, clientID, 10) {
			if r.Status != 200 {
				t.Fatalf("create %d answered %d: %s", i, r.Status, r.Body)
			}
		}
		if n := len(upstreamSessionsOf(t, oc, clientID)); n != 2 {
			t.Fatalf("upstream has %d sessions for one id, want 2 (one per node)", n)
		}
	})
}

// TestClusterCaddyfileIsCaddyfileExampleWithSharedStorage keeps the cluster
// recipe from drifting: without comments and its storage block, it is
// Caddyfile.example.
func TestClusterCaddyfileIsCaddyfileExampleWithSharedStorage(t *testing.T) {
	directives := func(name string) []string {
		raw, err := os.ReadFile(filepath.Join(repoRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		inStorage := false
		for _, line := range strings.Split(string(raw), "\n") {
			line = strings.TrimSpace(line)
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
			case strings.HasPrefix(line, "storage "):
				inStorage = true
			case inStorage:
				inStorage = line != "}"
			default:
				lines = append(lines, line)
			}
		}
		return lines
	}
	example, cluster := directives("Caddyfile.example"), directives("Caddyfile.cluster.example")
	if strings.Join(cluster, "\n") != strings.Join(example, "\n") {
		t.Fatalf("Caddyfile.cluster.example is not Caddyfile.example plus a storage block:\n--- Caddyfile.example\n%s\n--- Caddyfile.cluster.example\n%s",
			strings.Join(example, "\n"), strings.Join(cluster, "\n"))
	}
	if len(example) == 0 {
		t.Fatal("no directives read from Caddyfile.example")
	}
}

// findOrBuildClusterCaddy returns $CADDY_CLUSTER_BIN (CI builds it with
// xcaddy-cluster.sh), or builds it the same way into a temporary folder: a
// cold build takes about 2.5 minutes.
func findOrBuildClusterCaddy(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv("CADDY_CLUSTER_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			tb.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(tb.TempDir(), "caddy-cluster")
	tb.Logf("building %s with xcaddy-cluster.sh (set CADDY_CLUSTER_BIN to use a built one)", bin)
	cmd := exec.Command("./xcaddy-cluster.sh", bin)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("xcaddy-cluster.sh: %v\n%s", err, out)
	}
	return bin
}

// startRedis runs a Redis on a free loopback port with its files in a
// temporary folder, as the cluster recipe asks: every write synced to the
// append-only file before it is acknowledged. It returns the address.
func startRedis(tb testing.TB, bin string) string {
	tb.Helper()
	dir := tb.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(tb))
	_, port, _ := net.SplitHostPort(addr)
	p := startProcess(tb, "redis-server", dir, nil, bin,
		"--bind", "127.0.0.1", "--port", port, "--dir", dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always")
	waitListening(tb, addr, p)
	return addr
}

// redisExists asks Redis whether a key exists, in its wire protocol.
func redisExists(tb testing.TB, addr, key string) bool {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n", len(key), key)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		tb.Fatalf("redis EXISTS: %v", err)
	}
	return strings.TrimSpace(line) == ":1"
}

// createConcurrently sends n creates of one id at once, spread over the
// nodes in turn (create i goes to nodes[i%len(nodes)]).
func createConcurrently(tb testing.TB, nodes []string, clientID string, n int) []response {
	tb.Helper()
	answers := make([]response, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i], errs[i] = post(nodes[i%len(nodes)]+"/session", map[string]any{"id": clientID, "title": "same"})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("create %d: %v", i, err)
		}
	}
	return answers
}

// post is call's POST for goroutines and for nodes that may die: a request
// that gets no answer is an error, not a failed test.
func post(url string, body any) (response, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return response{}, err
	}
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Post(url, "application/json", bytes.NewReader(raw))
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: answer}, nil
}

// sessionOf reads the session of a 200 answer.
func sessionOf(r response) (session, bool) {
	var s session
	return s, r.Status == 200 && json.Unmarshal(r.Body, &s) == nil
}

// sessionThrough GETs a session through a node and reports whether it came
// back under the client id.
func sessionThrough(tb testing.TB, node *caddy, clientID string) (response, bool) {
	tb.Helper()
	r := call(tb, "GET", node.URL+"/session/"+clientID, nil, "")
	s, ok := sessionOf(r)
	return r, ok && s.ID == clientID
}

// waitForReply polls a session's messages through a proxy until the fake
// model's reply is among them, and returns them.
func waitForReply(tb testing.TB, base, clientID string) string {
	tb.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		r := call(tb, "GET", base+"/session/"+clientID+"/message", nil, "")
		if r.Status == 200 && bytes.Contains(r.Body, []byte(ModelReply)) {
			return string(r.Body)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no reply in %s's messages within 90 s: %d %s", clientID, r.Status, r.Body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
