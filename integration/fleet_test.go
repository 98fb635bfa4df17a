package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/internal/jstools"
)

// fleet is several stock opencode workers behind one Caddy on
// Caddyfile.example, its UPSTREAM listing them all.
type fleet struct {
	workers []*opencode
	front   *caddy
	model   *fakeModel
}

// lbTry is how long a request waits for its worker in these tests
// (LB_TRY_DURATION; Caddyfile.example's default is 30s).
const lbTry = 3 * time.Second

func upstreamList(workers []*opencode) string {
	var addrs []string
	for _, w := range workers {
		addrs = append(addrs, strings.TrimPrefix(w.URL, "http://"))
	}
	return strings.Join(addrs, " ")
}

func startFleet(t *testing.T, n int, extraEnv ...string) *fleet {
	t.Helper()
	f := &fleet{model: startFakeModel(t)}
	for range n {
		f.workers = append(f.workers, startOpencode(t, f.model, ""))
	}
	f.front = startCaddyFor(t, upstreamList(f.workers), append([]string{"LB_TRY_DURATION=" + lbTry.String()}, extraEnv...)...)
	for _, w := range f.workers {
		w.waitHealthy(t)
	}
	return f
}

// holder returns the index of the worker whose database holds the session
// the front door calls id (by the client id tag, or as an upstream id), and
// how many workers hold it. A worker that is down holds nothing.
func (f *fleet) holder(t *testing.T, id string) (index, count int) {
	t.Helper()
	index = -1
	for i, w := range f.workers {
		list, err := getJSON(w.URL + "/session?limit=100000")
		if err != nil {
			continue
		}
		var all []session
		list.json(t, &all)
		for _, s := range all {
			if s.ID == id || s.Metadata["clientSessionID"] == id {
				index = i
				count++
				break
			}
		}
	}
	return index, count
}

// sessionsOn lists the ids of every session in one worker's database.
func sessionsOn(t *testing.T, w *opencode) []session {
	t.Helper()
	var all []session
	call(t, "GET", w.URL+"/session?limit=100000", nil, "").json(t, &all)
	return all
}

// parallel runs f(i) for i in [0, n) on 12 goroutines.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func TestFleet(t *testing.T) {
	f := startFleet(t, 3)
	run := time.Now().UnixNano()
	id := func(kind string, i int) string { return fmt.Sprintf("ses_fleet_%s_%d_%d", kind, i, run) }

	// Mappings written by the single-worker version have no worker: sessions
	// made on worker 2 and mapped in storage the way it wrote them, before
	// this Caddy has seen anything of them.
	var legacy []string
	for i := range 3 {
		real := call(t, "POST", f.workers[2].URL+"/session", map[string]any{"title": "legacy"}, "")
		s, _ := sessionOf(real)
		writeLegacyMapping(t, f.front, id("legacy", i), s.ID)
		legacy = append(legacy, id("legacy", i))
	}

	events := subscribe(t, f.front.URL+"/event", "")
	globalEvents := subscribe(t, f.front.URL+"/global/event", "")

	// Every session the front door will be asked about, as the client knows
	// it, and how it was made.
	var mu sync.Mutex
	made := map[string]string{}
	for _, sid := range legacy {
		made[sid] = "legacy mapping"
	}
	record := func(t *testing.T, kind string, r response) string {
		t.Helper()
		s, ok := sessionOf(r)
		if !ok {
			t.Fatalf("%s: %d %s", kind, r.Status, r.Body)
		}
		mu.Lock()
		made[s.ID] = kind
		mu.Unlock()
		return s.ID
	}

	t.Run("sessions made every way are reachable through the front door, each on one worker", func(t *testing.T) {
		const withID, withoutID, children, forks, direct = 90, 45, 20, 20, 15
		parallel(withID, func(i int) {
			r, err := post(f.front.URL+"/session", map[string]any{"id": id("id", i), "title": fmt.Sprintf("with id %d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			if s, ok := sessionOf(r); !ok || s.ID != id("id", i) {
				t.Errorf("create %s: %d %s", id("id", i), r.Status, r.Body)
				return
			}
			record(t, "with id", r)
		})
		parallel(withoutID, func(i int) {
			r, err := post(f.front.URL+"/session", map[string]any{"title": fmt.Sprintf("without id %d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			record(t, "without id", r)
		})
		// Children with and without ids, of parents on every worker.
		parallel(children, func(i int) {
			body := map[string]any{"parentID": id("id", i), "title": "child"}
			kind := "child without id"
			if i%2 == 0 {
				body["id"], kind = id("child", i), "child with id"
			}
			r, err := post(f.front.URL+"/session", body)
			if err != nil {
				t.Error(err)
				return
			}
			record(t, kind, r)
		})
		parallel(forks, func(i int) {
			r, err := post(f.front.URL+"/session/"+id("id", 30+i)+"/fork", map[string]any{})
			if err != nil {
				t.Error(err)
				return
			}
			record(t, "fork", r)
		})
		// Sessions made on a worker directly, behind the module's back.
		parallel(direct, func(i int) {
			r, err := post(f.workers[i%len(f.workers)].URL+"/session", map[string]any{"title": "made on the worker"})
			if err != nil {
				t.Error(err)
				return
			}
			record(t, "made on a worker", r)
		})
		if t.Failed() {
			t.FailNow()
		}

		var notFound, other []string
		ids := make([]string, 0, len(made))
		for sid := range made {
			ids = append(ids, sid)
		}
		sort.Strings(ids)
		var check sync.Mutex
		parallel(len(ids), func(i int) {
			sid := ids[i]
			r, err := getJSON(f.front.URL + "/session/" + sid)
			check.Lock()
			defer check.Unlock()
			switch s, ok := sessionOf(r); {
			case err != nil:
				other = append(other, fmt.Sprintf("%s (%s): %v", sid, made[sid], err))
			case r.Status == 404:
				notFound = append(notFound, fmt.Sprintf("%s (%s)", sid, made[sid]))
			case !ok || s.ID != sid:
				other = append(other, fmt.Sprintf("%s (%s): %d %s", sid, made[sid], r.Status, r.Body))
			}
		})
		if len(notFound) > 0 || len(other) > 0 {
			t.Fatalf("of %d sessions, %d answered 404 through the front door: %v\nothers failed: %v", len(ids), len(notFound), notFound, other)
		}
		t.Logf("%d sessions read through the front door, zero 404s", len(ids))

		perWorker := make([]int, len(f.workers))
		for i := range withID {
			w, n := f.holder(t, id("id", i))
			if n != 1 {
				t.Fatalf("%s is held by %d workers", id("id", i), n)
			}
			perWorker[w]++
		}
		for w, n := range perWorker {
			if n == 0 {
				t.Errorf("worker %d got none of %d creates: %v", w, withID, perWorker)
			}
		}
		t.Logf("creates with an id per worker: %v", perWorker)
		for i := 0; i < children; i += 2 {
			parent, _ := f.holder(t, id("id", i))
			child, n := f.holder(t, id("child", i))
			if n != 1 || child != parent {
				t.Errorf("child %s is on worker %d (%d copies), its parent on %d", id("child", i), child, n, parent)
			}
		}
	})

	t.Run("GET /session lists every worker's sessions as one list, newest first, under client ids", func(t *testing.T) {
		r := call(t, "GET", f.front.URL+"/session?limit=100000", nil, "")
		var listed []struct {
			ID   string `json:"id"`
			Time struct {
				Updated float64 `json:"updated"`
			} `json:"time"`
		}
		r.json(t, &listed)
		seen := map[string]bool{}
		for i, s := range listed {
			seen[s.ID] = true
			if i > 0 && s.Time.Updated > listed[i-1].Time.Updated {
				t.Fatalf("list out of order at %d: %v after %v", i, s.Time.Updated, listed[i-1].Time.Updated)
			}
		}
		total := 0
		for _, w := range f.workers {
			total += len(sessionsOn(t, w))
		}
		if len(listed) != total {
			t.Errorf("front door lists %d sessions, the workers hold %d", len(listed), total)
		}
		for sid, kind := range made {
			if !seen[sid] {
				t.Errorf("%s (%s) is missing from the list", sid, kind)
			}
		}
		// Without a limit, opencode's own default of 100 applies to the whole list.
		var page []json.RawMessage
		call(t, "GET", f.front.URL+"/session", nil, "").json(t, &page)
		if len(page) != 100 {
			t.Errorf("GET /session without a limit gave %d sessions, want opencode's default 100", len(page))
		}
		var status map[string]any
		if r := call(t, "GET", f.front.URL+"/session/status", nil, ""); r.Status != 200 {
			t.Errorf("GET /session/status: %d %s", r.Status, r.Body)
		} else {
			r.json(t, &status)
		}
	})

	t.Run("sessions on every worker are prompted through the front door and answered", func(t *testing.T) {
		var sample []string
		for _, kind := range []string{"with id", "without id", "child with id", "child without id", "fork", "made on a worker", "legacy mapping"} {
			n := 0
			for sid, k := range made {
				if k == kind && n < 3 {
					sample = append(sample, sid)
					n++
				}
			}
		}
		parallel(len(sample), func(i int) {
			r, err := post(f.front.URL+"/session/"+sample[i]+"/prompt_async", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hello"}}})
			if err != nil || r.Status != 204 {
				t.Errorf("prompt %s (%s): %v %d %s", sample[i], made[sample[i]], err, r.Status, r.Body)
			}
		})
		parallel(len(sample), func(i int) {
			messages := waitForReply(t, f.front.URL, sample[i])
			if !strings.Contains(messages, `"sessionID":"`+sample[i]+`"`) {
				t.Errorf("%s's messages do not carry its id", sample[i])
			}
		})
	})

	t.Run("the official SDK and opencode run --attach work through the front door", func(t *testing.T) {
		tools := jstools.Ensure(t)
		v1ID, v2ID := id("sdk1", 0), id("sdk2", 0)
		got := runSDKFlow(t, tools, f.front.URL, v1ID, v2ID)
		holder, n := f.holder(t, v1ID)
		if n != 1 {
			t.Fatalf("the SDK's session is on %d workers", n)
		}
		for _, fork := range []string{v1ID + "_fork", v2ID + "_fork"} {
			if w, n := f.holder(t, fork); n != 1 || w != holder {
				t.Fatalf("the fork %s is on worker %d (of %d holding it), its parent on %d", fork, w, n, holder)
			}
		}
		real := ""
		for _, s := range upstreamSessionsOf(t, f.workers[holder], v1ID) {
			real = s.ID
		}
		for _, e := range got.Events {
			if strings.Contains(string(e), real) {
				t.Fatalf("an event on the merged stream carried the real id: %s", e)
			}
		}
		// The CLI reads the session, subscribes to the merged /event and
		// waits for this session to go idle.
		for i := range 3 {
			sid := id("id", 60+i)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			cmd := exec.CommandContext(ctx, opencodeBin, "run", "--attach", f.front.URL, "--session", sid, "hello")
			cmd.Dir, cmd.Env = f.workers[0].Dir, append(os.Environ(), f.workers[0].Env...)
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil || !strings.Contains(string(out), ModelReply) {
				t.Fatalf("opencode run --attach --session %s: %v\n%s", sid, err, out)
			}
		}
	})

	t.Run("every event of every worker arrives on the merged streams under client ids", func(t *testing.T) {
		titled := oneOnEachWorker(t, f, 90, func(i int) string { return id("id", i) })
		for _, sid := range titled {
			if r := call(t, "PATCH", f.front.URL+"/session/"+sid, map[string]any{"title": "renamed " + sid}, ""); r.Status != 200 {
				t.Fatalf("PATCH %s: %d %s", sid, r.Status, r.Body)
			}
		}
		for name, stream := range map[string]*eventStream{"/event": events, "/global/event": globalEvents} {
			pending := map[string]bool{}
			for _, sid := range titled {
				pending["renamed "+sid] = true
			}
			greetings := 0
			stream.until(t, 20*time.Second, func(e string) bool {
				if strings.Contains(e, `"type":"server.connected"`) {
					greetings++
				}
				for title := range pending {
					if strings.Contains(e, `"title":"`+title+`"`) && strings.Contains(e, `"sessionID":"`+strings.TrimPrefix(title, "renamed ")+`"`) {
						delete(pending, title)
					}
				}
				return len(pending) == 0
			})
			if greetings != 1 {
				t.Errorf("%s greeted %d times, want once", name, greetings)
			}
		}
	})

	t.Run("a client of the merged stream that drops and resumes gets every worker's events it missed", func(t *testing.T) {
		client := openEvents(t, f.front.URL+"/event", "")
		client.next(t)
		onEach := oneOnEachWorker(t, f, 90, func(i int) string { return id("id", i) })
		call(t, "PATCH", f.front.URL+"/session/"+onEach[0], map[string]any{"title": "before the drop"}, "")
		last := client.until(t, 20*time.Second, func(ev sse) bool { return strings.Contains(ev.data, `"title":"before the drop"`) }).ID()
		client.cancel()
		for _, sid := range onEach {
			call(t, "PATCH", f.front.URL+"/session/"+sid, map[string]any{"title": "missed " + sid}, "")
		}
		resumed := openEvents(t, f.front.URL+"/event", last)
		resumed.next(t)
		pending := map[string]bool{}
		for _, sid := range onEach {
			pending[sid] = true
		}
		resumed.until(t, 20*time.Second, func(ev sse) bool {
			if strings.Contains(ev.data, "session_ids.resync") {
				t.Fatalf("a resync on resume: %s", ev.data)
			}
			for sid := range pending {
				if strings.Contains(ev.data, `"title":"missed `+sid+`"`) {
					delete(pending, sid)
				}
			}
			return len(pending) == 0
		})
	})

	t.Run("kill -9 of a worker: its sessions answer 503 naming it, never 404 or another worker; the rest carry on", func(t *testing.T) {
		victim := 1
		var theirs, others []string
		for i := range 90 {
			if w, _ := f.holder(t, id("id", i)); w == victim {
				theirs = append(theirs, id("id", i))
			} else {
				others = append(others, id("id", i))
			}
		}
		before := len(sessionsOn(t, f.workers[victim]))
		f.workers[victim].kill()

		start := time.Now()
		r := call(t, "GET", f.front.URL+"/session/"+theirs[0], nil, "")
		waited := time.Since(start)
		worker := strings.TrimPrefix(f.workers[victim].URL, "http://")
		if r.Status != 503 || !strings.Contains(string(r.Body), `"name":"UpstreamError"`) || !strings.Contains(string(r.Body), worker) {
			t.Fatalf("a session of the dead worker answered %d %s, want 503 UpstreamError naming %s", r.Status, r.Body, worker)
		}
		if waited > lbTry+3*time.Second {
			t.Errorf("the 503 took %v, lb_try_duration is %v", waited, lbTry)
		}
		// Meanwhile everything else works, and new sessions go to the living.
		var wg sync.WaitGroup
		for _, sid := range theirs[1:4] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r, _ := getJSON(f.front.URL + "/session/" + sid); r.Status != 503 {
					t.Errorf("%s of the dead worker answered %d, want 503", sid, r.Status)
				}
			}()
		}
		for _, sid := range others[:10] {
			if _, ok := sessionThrough(t, f.front, sid); !ok {
				t.Errorf("%s of a living worker is unreachable while another is down", sid)
			}
		}
		for i := range 12 {
			sid := id("during", i)
			r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid}, "")
			if s, ok := sessionOf(r); !ok || s.ID != sid {
				t.Errorf("create %s while a worker is down: %d %s", sid, r.Status, r.Body)
			}
		}
		// A create of an id the dead worker holds waits and fails: it never
		// makes the session a second time elsewhere.
		if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": theirs[0], "title": "with id " + strings.Split(theirs[0], "_")[3]}, ""); r.Status != 503 {
			t.Errorf("re-create of a dead worker's id answered %d %s, want 503", r.Status, r.Body)
		}
		if r := call(t, "GET", f.front.URL+"/session?limit=100000", nil, ""); r.Status != 200 || !strings.Contains(r.Header.Get("Session-Ids-Missing-Workers"), worker) {
			t.Errorf("a list while a worker is down: %d, missing workers %q", r.Status, r.Header.Get("Session-Ids-Missing-Workers"))
		}
		wg.Wait()

		f.workers[victim].start()
		eventually(t, 60*time.Second, "the dead worker's sessions to work again", func() bool {
			_, ok := sessionThrough(t, f.front, theirs[0])
			return ok
		})
		for _, sid := range theirs {
			if _, ok := sessionThrough(t, f.front, sid); !ok {
				t.Errorf("%s did not come back with its worker", sid)
			}
		}
		if n := len(sessionsOn(t, f.workers[victim])); n != before {
			t.Errorf("the dead worker has %d sessions after it came back, had %d: something was created on it or lost", n, before)
		}
		for i := range 12 {
			if _, n := f.holder(t, id("during", i)); n != 1 {
				t.Errorf("%s is held by %d workers", id("during", i), n)
			}
		}
		for _, sid := range theirs {
			if _, n := f.holder(t, sid); n != 1 {
				t.Errorf("%s is held by %d workers after the outage", sid, n)
			}
		}
		// The merged event stream subscribed to the worker again, and told
		// its client that events of that worker may be missing.
		sid := theirs[len(theirs)-1]
		call(t, "PATCH", f.front.URL+"/session/"+sid, map[string]any{"title": "after the outage"}, "")
		seen := strings.Join(events.until(t, 20*time.Second, func(e string) bool {
			return strings.Contains(e, `"title":"after the outage"`) && strings.Contains(e, sid)
		}), "\n")
		if !strings.Contains(seen, `"reason":"upstream_reconnected"`) || !strings.Contains(seen, `"worker":"`+worker+`"`) {
			t.Errorf("the merged stream did not say that %s's events may be missing:\n%s", worker, seen)
		}
	})

	t.Run("a reload that removes a worker: its sessions answer a clear 503 at once, and come back when it returns", func(t *testing.T) {
		removed := 2
		var theirs, others []string
		for i := range 30 {
			if w, _ := f.holder(t, id("id", i)); w == removed {
				theirs = append(theirs, id("id", i))
			} else {
				others = append(others, id("id", i))
			}
		}
		reloadFront(t, f.front, upstreamList([]*opencode{f.workers[0], f.workers[1]}))
		worker := strings.TrimPrefix(f.workers[removed].URL, "http://")
		eventually(t, 10*time.Second, "the removed worker's sessions to answer 503", func() bool {
			r := call(t, "GET", f.front.URL+"/session/"+theirs[0], nil, "")
			return r.Status == 503 && strings.Contains(string(r.Body), "not among reverse_proxy's upstreams") && strings.Contains(string(r.Body), worker)
		})
		start := time.Now()
		if r := call(t, "GET", f.front.URL+"/session/"+theirs[1], nil, ""); r.Status != 503 || time.Since(start) > time.Second {
			t.Errorf("a removed worker's session answered %d after %v, want 503 at once", r.Status, time.Since(start))
		}
		for _, sid := range others[:5] {
			if _, ok := sessionThrough(t, f.front, sid); !ok {
				t.Errorf("%s unreachable after the reload", sid)
			}
		}
		for i := range 6 {
			sid := id("reloaded", i)
			if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid}, ""); r.Status != 200 {
				t.Fatalf("create after the reload: %d %s", r.Status, r.Body)
			}
			if w, _ := f.holder(t, sid); w == removed {
				t.Errorf("%s was placed on the removed worker", sid)
			}
		}
		reloadFront(t, f.front, upstreamList(f.workers))
		eventually(t, 10*time.Second, "the worker's sessions to come back", func() bool {
			_, ok := sessionThrough(t, f.front, theirs[0])
			return ok
		})
	})
}

// getJSON is a GET for goroutines: failures are returned, not fatal.
// oneOnEachWorker returns, for each worker in order, the first of the
// sessions id(0) … id(n-1) that it holds.
func oneOnEachWorker(t *testing.T, f *fleet, n int, id func(int) string) []string {
	t.Helper()
	var found []string
	for w := range f.workers {
		for i := range n {
			if holder, _ := f.holder(t, id(i)); holder == w {
				found = append(found, id(i))
				break
			}
		}
	}
	return found
}

func getJSON(url string) (response, error) {
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body}, err
}

// writeLegacyMapping stores a mapping the way the single-worker version
// wrote it (no worker), in the front door's file storage.
func writeLegacyMapping(t *testing.T, c *caddy, clientID, realID string) {
	t.Helper()
	dir := filepath.Join(c.DataDir, "caddy", "session_ids", "default")
	record, _ := json.Marshal(map[string]any{"client_id": clientID, "real_id": realID, "fields": map[string]any{}, "created": time.Now().UTC()})
	for path, content := range map[string][]byte{
		filepath.Join(dir, "real", realID):     []byte(clientID),
		filepath.Join(dir, "client", clientID): record,
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// reloadFront reloads a running Caddy's config with another worker list,
// the way an operator does: `caddy reload` adapts Caddyfile.example with
// the new environment and posts it to the admin endpoint.
func reloadFront(t *testing.T, c *caddy, upstreams string) {
	t.Helper()
	var env []string
	admin := ""
	for _, kv := range c.env {
		if strings.HasPrefix(kv, "UPSTREAM=") {
			kv = "UPSTREAM=" + upstreams
		}
		if v, ok := strings.CutPrefix(kv, "ADMIN="); ok {
			admin = v
		}
		env = append(env, kv)
	}
	cmd := exec.Command(c.bin, "reload", "--config", c.config, "--address", admin)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}
