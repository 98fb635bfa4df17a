package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// adminOf is the admin API address of a Caddy the tests started.
func adminOf(c *caddy) string {
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "ADMIN="); ok {
			return "http://" + v
		}
	}
	return ""
}

// admin sends a request to a Caddy's admin API.
func admin(t *testing.T, c *caddy, method, path string, body any) response {
	t.Helper()
	var reader *bytes.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		reader = bytes.NewReader(raw)
	} else {
		reader = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, adminOf(c)+path, reader)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return response{Status: resp.StatusCode, Body: buf.Bytes(), Header: resp.Header}
}

// TestMoveAndDrain: a session changes workers with its history while
// clients use it, and a worker is emptied for an upgrade, through Caddy's
// admin API, in front of stock opencode workers.
func TestMoveAndDrain(t *testing.T) {
	f := startFleet(t, 2, "PLACEMENT=round_robin")
	run := time.Now().UnixNano()
	id := func(kind string, i int) string { return fmt.Sprintf("ses_move_%s_%d_%d", kind, i, run) }
	dial := func(i int) string { return strings.TrimPrefix(f.workers[i].URL, "http://") }
	prompt := func(t *testing.T, sid, text string) {
		t.Helper()
		r := call(t, "POST", f.front.URL+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, "")
		if r.Status != 200 || !strings.Contains(string(r.Body), ModelReply) {
			t.Fatalf("prompt %s: %d %.300s", sid, r.Status, r.Body)
		}
	}

	t.Run("a move takes the session, its child, its fork and its history to the other worker, and nothing is seen of the old copy", func(t *testing.T) {
		parent, child := id("parent", 0), id("child", 0)
		if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": parent, "title": "moving"}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": child, "parentID": parent}, ""); r.Status != 200 {
			t.Fatalf("child: %d %s", r.Status, r.Body)
		}
		prompt(t, parent, "first words")
		fork := id("fork", 0)
		if r := call(t, "POST", f.front.URL+"/session/"+parent+"/fork", map[string]any{"id": fork}, ""); r.Status != 200 {
			t.Fatalf("fork: %d %s", r.Status, r.Body)
		}
		from, _ := f.holder(t, parent)
		to := 1 - from
		events := subscribe(t, f.front.URL+"/event", "")

		r := admin(t, f.front, "POST", "/session_ids/move", map[string]any{"session": parent, "to": dial(to)})
		var moved struct {
			Session, From, To string
			Sessions          []string
			Messages          int
			Forks             []struct{ Session string }
		}
		r.json(t, &moved)
		if r.Status != 200 || moved.Session != parent || moved.From != dial(from) || moved.To != dial(to) || len(moved.Sessions) != 2 || moved.Messages != 2 ||
			len(moved.Forks) != 1 || moved.Forks[0].Session != fork {
			t.Fatalf("move: %d %s", r.Status, r.Body)
		}
		for _, sid := range []string{parent, child, fork} {
			if w, n := f.holder(t, sid); n != 1 || w != to {
				t.Fatalf("%s is on worker %d (held by %d) after the move to %d", sid, w, n, to)
			}
		}
		messages := call(t, "GET", f.front.URL+"/session/"+parent+"/message", nil, "")
		if messages.Status != 200 || strings.Count(string(messages.Body), `"role":"user"`) != 1 || !strings.Contains(string(messages.Body), `"sessionID":"`+parent+`"`) {
			t.Fatalf("the messages after the move: %d %.400s", messages.Status, messages.Body)
		}
		var children []session
		call(t, "GET", f.front.URL+"/session/"+parent+"/children", nil, "").json(t, &children)
		if len(children) != 1 || children[0].ID != child {
			t.Fatalf("the children after the move: %+v", children)
		}
		prompt(t, parent, "second words")
		if body, _ := f.model.lastAgentBody.Load().(string); !strings.Contains(body, "first words") || !strings.Contains(body, "second words") {
			t.Fatalf("the model call after the move lacks the earlier turn: %.600s", body)
		}
		var listed []session
		call(t, "GET", f.front.URL+"/session", nil, "").json(t, &listed)
		seen := 0
		for _, s := range listed {
			if s.ID == parent {
				seen++
			}
		}
		if seen != 1 {
			t.Fatalf("GET /session lists the moved session %d times", seen)
		}
		// The old worker deleted its copy; clients are told the session
		// moved, not that it was deleted.
		toldMoved := 0
		for _, e := range events.until(t, 30*time.Second, func(e string) bool {
			return strings.Contains(e, `"session.idle"`) && strings.Contains(e, parent)
		}) {
			if strings.Contains(e, `"session.deleted"`) {
				t.Fatalf("the stream told clients a moved session was deleted: %s", e)
			}
			if strings.Contains(e, `"type":"session_ids.moved"`) && strings.Contains(e, `"sessionID":"`+parent+`"`) {
				if !strings.Contains(e, `"to":"`+dial(to)+`"`) {
					t.Fatalf("the moved event does not name the new worker: %s", e)
				}
				toldMoved++
			}
		}
		if toldMoved != 1 {
			t.Fatalf("the stream told clients %d times that the session moved, want once", toldMoved)
		}
		if again := admin(t, f.front, "POST", "/session_ids/move", map[string]any{"session": parent, "to": dial(to)}); again.Status != http.StatusConflict {
			t.Fatalf("a move to where the session is: %d %s", again.Status, again.Body)
		}
		if bad := admin(t, f.front, "POST", "/session_ids/move", map[string]any{"session": parent, "to": "127.0.0.1:1"}); bad.Status != http.StatusBadRequest {
			t.Fatalf("a move to no worker: %d %s", bad.Status, bad.Body)
		}
		if r := call(t, "DELETE", f.front.URL+"/session/"+parent, nil, ""); r.Status != 200 {
			t.Fatalf("a delete after the move: %d %s", r.Status, r.Body)
		}
	})

	t.Run("a drain empties a worker while clients read and prompt, through a config reload, and it gets no new session until undrained", func(t *testing.T) {
		const n = 60 // about 30 on each worker
		for i := range n {
			if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": id("drained", i), "title": fmt.Sprintf("drained %d", i)}, ""); r.Status != 200 {
				t.Fatalf("create %d: %d %s", i, r.Status, r.Body)
			}
		}
		var onZero []string
		for i := range n {
			if w, _ := f.holder(t, id("drained", i)); w == 0 {
				onZero = append(onZero, id("drained", i))
			}
		}
		if len(onZero) < 5 {
			t.Fatalf("only %d of %d sessions on worker 0", len(onZero), n)
		}
		for _, sid := range onZero[:3] {
			prompt(t, sid, "before the drain "+sid)
		}

		// Clients keep using the sessions during the drain, each request on
		// a connection of its own: the config reload closes the old
		// server's idle keep-alive connections (Caddy's graceful reload),
		// and a request racing onto one is reset before any handler sees
		// it (seen once in CI).
		readers := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		stop := make(chan struct{})
		var failures sync.Map
		var requests atomic.Int64
		var wg sync.WaitGroup
		for c := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					sid := onZero[(c+i*4)%len(onZero)]
					path := "/session/" + sid
					if i%2 == 1 {
						path += "/message"
					}
					resp, err := readers.Get(f.front.URL + path)
					requests.Add(1)
					if err != nil {
						failures.Store(path, err.Error())
						continue
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						failures.Store(path, resp.StatusCode)
					}
				}
			}()
		}
		wg.Add(1)
		go func() { // and one prompts
			defer wg.Done()
			prompt(t, onZero[3], "during the drain")
		}()

		// The drain is a job: a config reload in its middle (which replaces
		// the admin server, and may cut the first POST off) does not stop
		// it, and a second POST joins it.
		go func() {
			raw, _ := json.Marshal(map[string]any{"worker": dial(0)})
			if resp, err := http.Post(adminOf(f.front)+"/session_ids/drain", "application/json", bytes.NewReader(raw)); err == nil {
				resp.Body.Close()
			}
		}()
		deadline := time.Now().Add(time.Minute)
		for {
			var progress struct{ Moved []struct{ Session string } }
			if got := admin(t, f.front, "GET", "/session_ids/drain?worker="+dial(0), nil); got.Status == 200 {
				got.json(t, &progress)
			}
			if len(progress.Moved) >= 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the drain moved nothing in a minute")
			}
			time.Sleep(100 * time.Millisecond)
		}
		reloadSameConfig(t, f.front)
		r := admin(t, f.front, "POST", "/session_ids/drain", map[string]any{"worker": dial(0)})
		close(stop)
		wg.Wait()
		var drain struct {
			Worker    string
			Moved     []struct{ Session string }
			Failed    map[string]string
			Remaining int
			Finished  *time.Time
			Error     string
		}
		r.json(t, &drain)
		if r.Status != 200 || drain.Finished == nil || drain.Error != "" || len(drain.Failed) != 0 || len(drain.Moved) < len(onZero) {
			t.Fatalf("drain: %d %s", r.Status, r.Body)
		}
		failures.Range(func(k, v any) bool {
			t.Errorf("a client's request during the drain failed: %v %v", k, v)
			return true
		})
		t.Logf("%d sessions moved, %d client requests during the drain", len(drain.Moved), requests.Load())
		for _, sid := range onZero {
			if w, n := f.holder(t, sid); n != 1 || w != 1 {
				t.Fatalf("%s is on worker %d (held by %d) after the drain", sid, w, n)
			}
		}
		for _, sid := range onZero[:3] {
			messages := call(t, "GET", f.front.URL+"/session/"+sid+"/message", nil, "")
			if !strings.Contains(string(messages.Body), "before the drain "+sid) {
				t.Fatalf("%s lost its messages in the drain: %.300s", sid, messages.Body)
			}
		}
		if messages := call(t, "GET", f.front.URL+"/session/"+onZero[3]+"/message", nil, ""); !strings.Contains(string(messages.Body), "during the drain") {
			t.Fatalf("the prompt sent during the drain is lost: %.300s", messages.Body)
		}
		prompt(t, onZero[0], "after the drain")
		if body, _ := f.model.lastAgentBody.Load().(string); !strings.Contains(body, "before the drain") || !strings.Contains(body, "after the drain") {
			t.Fatalf("the model call after the drain lacks the session's history: %.600s", body)
		}
		if got := admin(t, f.front, "GET", "/session_ids/drain?worker="+dial(0), nil); got.Status != 200 || !bytes.Contains(got.Body, []byte(`"remaining":0`)) {
			t.Fatalf("the drain's progress: %d %s", got.Status, got.Body)
		}
		var workers []struct {
			Worker   string
			Healthy  bool
			Draining bool
			Sessions *int
		}
		admin(t, f.front, "GET", "/session_ids/workers", nil).json(t, &workers)
		if len(workers) != 2 || workers[0].Worker != dial(0) || !workers[0].Draining || workers[0].Sessions == nil || *workers[0].Sessions != 0 || workers[1].Draining {
			t.Fatalf("the workers after the drain: %+v", workers)
		}
		for i := range 4 {
			sid := id("afterdrain", i)
			call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid}, "")
			if w, _ := f.holder(t, sid); w != 1 {
				t.Fatalf("a session made while worker 0 is drained went to worker %d", w)
			}
		}
		if r := admin(t, f.front, "POST", "/session_ids/undrain", map[string]any{"worker": dial(0)}); r.Status != 200 {
			t.Fatalf("undrain: %d %s", r.Status, r.Body)
		}
		placed := map[int]int{}
		for i := range 4 {
			sid := id("undrained", i)
			call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid}, "")
			w, _ := f.holder(t, sid)
			placed[w]++
		}
		if placed[0] == 0 {
			t.Fatalf("no new session went to the undrained worker: %v", placed)
		}
	})
}

// reloadSameConfig makes a Caddy load its config again, as a config change
// would: new handlers, a new admin server.
func reloadSameConfig(t *testing.T, c *caddy) {
	t.Helper()
	config := admin(t, c, "GET", "/config/", nil)
	if config.Status != 200 {
		t.Fatalf("GET /config/: %d %s", config.Status, config.Body)
	}
	req, _ := http.NewRequest("POST", adminOf(c)+"/load", bytes.NewReader(config.Body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate") // even though it is unchanged
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /load: %d", resp.StatusCode)
	}
}

// TestMoveInDirectMode: direct mode in front of two reference native
// servers, whose sync routes are compatible with opencode's: a session
// under its own id moves with its history and child, and clients are told.
func TestMoveInDirectMode(t *testing.T) {
	workers := []*native{startNative(t), startNative(t)}
	front := startCaddyFor(t, workers[0].URL+" "+workers[1].URL, "MODE=direct", "PLACEMENT=round_robin", "LB_TRY_DURATION=3s")
	run := time.Now().UnixNano()
	parent, child := fmt.Sprintf("ses_dmove_%d", run), fmt.Sprintf("ses_dmove_child_%d", run)
	for _, body := range []map[string]any{{"id": parent, "title": "direct"}, {"id": child, "parentID": parent}} {
		if r := call(t, "POST", front.URL+"/session", body, ""); r.Status != 200 {
			t.Fatalf("create %v: %d %s", body["id"], r.Status, r.Body)
		}
	}
	if r := call(t, "POST", front.URL+"/session/"+parent+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "first words"}}}, ""); r.Status != 200 {
		t.Fatalf("prompt: %d %s", r.Status, r.Body)
	}
	fork := fmt.Sprintf("ses_dmove_fork_%d", run)
	if r := call(t, "POST", front.URL+"/session/"+parent+"/fork", map[string]any{"id": fork}, ""); r.Status != 200 {
		t.Fatalf("fork: %d %s", r.Status, r.Body)
	}
	holds := func(w *native, id string) bool { return call(t, "GET", w.URL+"/session/"+id, nil, "").Status == 200 }
	from := 0
	if holds(workers[1], parent) {
		from = 1
	}
	to := 1 - from
	events := subscribe(t, front.URL+"/event", "")
	r := admin(t, front, "POST", "/session_ids/move", map[string]any{"session": parent, "to": strings.TrimPrefix(workers[to].URL, "http://")})
	if r.Status != 200 || !strings.Contains(string(r.Body), `"messages":2`) || !strings.Contains(string(r.Body), `"forks":[{"session":"`+fork+`"`) {
		t.Fatalf("move: %d %s", r.Status, r.Body)
	}
	for _, id := range []string{parent, child, fork} {
		if holds(workers[from], id) || !holds(workers[to], id) {
			t.Fatalf("%s is not on worker %d alone after the move", id, to)
		}
	}
	if r := call(t, "POST", front.URL+"/session/"+parent+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "second words"}}}, ""); r.Status != 200 {
		t.Fatalf("prompt after the move: %d %s", r.Status, r.Body)
	}
	messages := call(t, "GET", front.URL+"/session/"+parent+"/message", nil, "")
	if !strings.Contains(string(messages.Body), "first words") || !strings.Contains(string(messages.Body), "second words") {
		t.Fatalf("the messages after the move: %.400s", messages.Body)
	}
	// Its id is the same, so a create of it is still a duplicate.
	if again := call(t, "POST", front.URL+"/session", map[string]any{"id": parent, "title": "direct"}, ""); again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("a create of the moved id: %d %s", again.Status, again.Body)
	}
	moved := events.until(t, 30*time.Second, func(e string) bool {
		return strings.Contains(e, `"type":"session_ids.moved"`) && strings.Contains(e, `"sessionID":"`+parent+`"`)
	})
	for _, e := range moved {
		if strings.Contains(e, `"session.deleted"`) {
			t.Fatalf("the stream told clients a moved session was deleted: %s", e)
		}
	}
}

// TestAMoveOntoAnOlderOpencodeFailsCleanly: opencode 1.15.4 has the sync
// routes too, but its replay refuses the messages of a 1.18.33 session
// (500; measured). The move fails with the worker's answer, the half copy on
// the older worker is deleted, and the session goes on where it was.
func TestAMoveOntoAnOlderOpencodeFailsCleanly(t *testing.T) {
	bin, err := findOrInstallOpencode(LegacyOpencodeVersion)
	if err != nil {
		t.Fatal(err)
	}
	model := startFakeModel(t)
	current, legacy := startOpencode(t, model, ""), startOpencodeBin(t, bin, model, "")
	front := startCaddyFor(t, upstreamList([]*opencode{current, legacy}), "PLACEMENT=first", "LB_TRY_DURATION="+lbTry.String())
	current.waitHealthy(t)
	legacy.waitHealthy(t)
	sid := fmt.Sprintf("ses_oldmove_%d", time.Now().UnixNano())
	if r := call(t, "POST", front.URL+"/session", map[string]any{"id": sid, "title": "older"}, ""); r.Status != 200 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	prompt := func(text string) {
		t.Helper()
		if r := call(t, "POST", front.URL+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, ""); r.Status != 200 {
			t.Fatalf("prompt: %d %.300s", r.Status, r.Body)
		}
	}
	prompt("first words")
	events := subscribe(t, front.URL+"/event", "")
	r := admin(t, front, "POST", "/session_ids/move", map[string]any{"session": sid, "to": strings.TrimPrefix(legacy.URL, "http://")})
	if r.Status != http.StatusBadGateway || !strings.Contains(string(r.Body), "/sync/replay") {
		t.Fatalf("a move onto opencode %s: %d %s", LegacyOpencodeVersion, r.Status, r.Body)
	}
	if n := len(sessionsOn(t, legacy)); n != 0 {
		t.Fatalf("the failed move left %d sessions on the older worker", n)
	}
	prompt("second words")
	messages := call(t, "GET", front.URL+"/session/"+sid+"/message", nil, "")
	if strings.Count(string(messages.Body), `"role":"user"`) != 2 || len(upstreamSessionsOf(t, current, sid)) != 1 {
		t.Fatalf("the session after the failed move: %d %.300s", messages.Status, messages.Body)
	}
	// Clients are told nothing of the half copy and its deletion.
	for _, e := range events.until(t, 30*time.Second, func(e string) bool {
		return strings.Contains(e, `"session.idle"`) && strings.Contains(e, sid)
	}) {
		if strings.Contains(e, `"session.deleted"`) || strings.Contains(e, `"session_ids.moved"`) {
			t.Fatalf("the stream told clients of a failed move: %s", e)
		}
	}
}
