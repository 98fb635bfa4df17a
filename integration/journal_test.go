package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// journalOf reads the journal a Caddy keeps of an upstream session in its
// file storage: its events in order, and the bytes it takes.
func journalOf(t *testing.T, c *caddy, namespace, realID string) (events []map[string]any, size int64) {
	t.Helper()
	dir := filepath.Join(c.DataDir, "caddy", "session_ids", namespace, "journal", realID)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0
	}
	for _, e := range entries {
		if e.Name() == "full" {
			t.Fatalf("the journal of %s is full", realID)
		}
		if !strings.Contains(e.Name(), "-") {
			continue // not a chunk: where the session is
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		size += int64(len(raw))
		var part []map[string]any
		if err := json.Unmarshal(raw, &part); err != nil {
			t.Fatalf("chunk %s: %v", e.Name(), err)
		}
		events = append(events, part...)
	}
	sort.Slice(events, func(i, j int) bool { return events[i]["seq"].(float64) < events[j]["seq"].(float64) })
	return events, size
}

// lastSeq is the seq of the last event of a session's history on a worker.
func lastSeq(t *testing.T, w *opencode, realID string) float64 {
	t.Helper()
	var history []map[string]any
	call(t, "POST", w.URL+"/sync/history", map[string]any{}, "").json(t, &history)
	last := -1.0
	for _, e := range history {
		if e["aggregate_id"] == realID {
			last = max(last, e["seq"].(float64))
		}
	}
	return last
}

// TestTheJournal: with `journal on`, Caddy keeps each session's sync history
// in its storage after every turn, a history that makes the session again
// on another worker, and drops it when the session is deleted.
func TestTheJournal(t *testing.T) {
	f := startFleet(t, 2, "PLACEMENT=first", "JOURNAL=on")
	sid := "ses_journal_" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid, "title": "journaled"}, ""); r.Status != 200 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	real := realIDOn(t, f.workers[0], sid)
	upToDate := func(turn string) []map[string]any {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			events, size := journalOf(t, f.front, "default", real)
			last := lastSeq(t, f.workers[0], real)
			if len(events) > 0 && events[len(events)-1]["seq"].(float64) == last && float64(len(events)) == last+1 {
				t.Logf("after %s: %d events, %d bytes", turn, len(events), size)
				return events
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s the journal holds %d events, the worker's history ends at %v", turn, len(events), last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, text := range []string{"first words", "second words"} {
		if r := call(t, "POST", f.front.URL+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, ""); r.Status != 200 {
			t.Fatalf("prompt: %d %.300s", r.Status, r.Body)
		}
		upToDate("the turn \"" + text + "\"")
	}
	events := upToDate("both turns")

	// What it holds makes the session again on the other worker.
	replay := make([]map[string]any, len(events))
	for i, e := range events {
		replay[i] = map[string]any{"id": e["id"], "aggregateID": e["aggregate_id"], "seq": e["seq"], "type": e["type"], "data": e["data"]}
	}
	var path struct{ Directory string }
	call(t, "GET", f.workers[1].URL+"/path", nil, "").json(t, &path)
	if r := call(t, "POST", f.workers[1].URL+"/sync/replay", map[string]any{"directory": path.Directory, "events": replay}, ""); r.Status != 200 {
		t.Fatalf("replaying the journal: %d %s", r.Status, r.Body)
	}
	messages := call(t, "GET", f.workers[1].URL+"/session/"+real+"/message", nil, "")
	if strings.Count(string(messages.Body), `"role":"user"`) != 2 || !strings.Contains(string(messages.Body), "second words") {
		t.Fatalf("the session made again from the journal: %d %.300s", messages.Status, messages.Body)
	}
	// Deleting that copy, on a worker that does not hold the session,
	// leaves the journal as it is.
	call(t, "DELETE", f.workers[1].URL+"/session/"+real, nil, "")
	time.Sleep(time.Second)
	if kept, _ := journalOf(t, f.front, "default", real); len(kept) != len(events) {
		t.Fatalf("deleting a copy on another worker changed the journal: %d events, had %d", len(kept), len(events))
	}

	if r := call(t, "DELETE", f.front.URL+"/session/"+sid, nil, ""); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if events, _ := journalOf(t, f.front, "default", real); len(events) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the journal of a deleted session stayed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestALostWorkersSessionsAreRehomed: with `journal on` and rehome_after, a
// worker killed with -9 has its sessions made again on the other worker
// from their journals, with every completed turn; clients go on with the
// same id; and when the old worker comes back with its copy, the copy is
// deleted and never routed to.
func TestALostWorkersSessionsAreRehomed(t *testing.T) {
	f := startFleet(t, 2, "PLACEMENT=first", "JOURNAL=on", "REHOME_AFTER=2s")
	sid := "ses_rehome_" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	child := sid + "_child"
	if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": sid, "title": "lost"}, ""); r.Status != 200 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": child, "parentID": sid}, ""); r.Status != 200 {
		t.Fatalf("child: %d %s", r.Status, r.Body)
	}
	prompt := func(text string) {
		t.Helper()
		if r := call(t, "POST", f.front.URL+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, ""); r.Status != 200 {
			t.Fatalf("prompt %q: %d %.300s", text, r.Status, r.Body)
		}
	}
	prompt("first words")
	prompt("second words")
	real := realIDOn(t, f.workers[0], sid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		events, _ := journalOf(t, f.front, "default", real)
		if len(events) > 0 && events[len(events)-1]["seq"].(float64) == lastSeq(t, f.workers[0], real) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the journal did not catch up with the two turns")
		}
		time.Sleep(100 * time.Millisecond)
	}

	f.workers[0].kill()
	lost := time.Now()
	var messages response
	for deadline := time.Now().Add(60 * time.Second); ; {
		messages = call(t, "GET", f.front.URL+"/session/"+sid+"/message", nil, "")
		if messages.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the session of the lost worker is still unavailable: %d %s", messages.Status, messages.Body)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the session answered again %v after its worker was killed", time.Since(lost).Round(100*time.Millisecond))
	if strings.Count(string(messages.Body), `"role":"user"`) != 2 || !strings.Contains(string(messages.Body), `"sessionID":"`+sid+`"`) {
		t.Fatalf("the re-homed session lacks its turns: %.400s", messages.Body)
	}
	var children []session
	call(t, "GET", f.front.URL+"/session/"+sid+"/children", nil, "").json(t, &children)
	if len(children) != 1 || children[0].ID != child {
		t.Fatalf("the re-homed session's children: %+v", children)
	}
	prompt("third words")
	if body, _ := f.model.lastAgentBody.Load().(string); !strings.Contains(body, "first words") || !strings.Contains(body, "third words") {
		t.Fatalf("the model call after the re-home lacks the history: %.600s", body)
	}

	// The old worker comes back with its data: its copy is stale, and goes.
	f.workers[0].start()
	f.workers[0].waitHealthy(t)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, n := f.holder(t, sid); n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stale copy on the worker that came back was not deleted")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if w, _ := f.holder(t, sid); w != 1 {
		t.Fatalf("the session is on worker %d after the old worker came back", w)
	}
	prompt("fourth words")
	if w, n := f.holder(t, sid); w != 1 || n != 1 {
		t.Fatalf("a prompt after the old worker came back went to worker %d (held by %d)", w, n)
	}
}

// waitJournaled waits until the journal a Caddy keeps in its file storage
// holds a session's whole history on a worker.
func waitJournaled(t *testing.T, c *caddy, w *opencode, realID string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		events, _ := journalOf(t, c, "default", realID)
		if len(events) > 0 && events[len(events)-1]["seq"].(float64) == lastSeq(t, w, realID) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the journal of %s did not catch up with its history", realID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loseData kills a worker, deletes everything it stored, and starts a new
// process on its address: healthy, and without a session.
func loseData(t *testing.T, w *opencode) {
	t.Helper()
	w.kill()
	for _, kv := range w.Env {
		if dir, ok := strings.CutPrefix(kv, "XDG_DATA_HOME="); ok {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.start()
	w.waitHealthy(t)
	if n := len(sessionsOn(t, w)); n != 0 {
		t.Fatalf("the worker has %d sessions after its data was deleted", n)
	}
}

// TestAWorkerThatLostItsDataHasItsSessionsMadeAgain: a worker replaced by
// a new process on its address, its data gone, answers 404 for the
// sessions recorded on it. With the journal, the first request for one
// brings it back on the other worker with every completed turn (and the
// worker's other sessions follow); without, the 404 says why, and
// create_missing makes no empty session in its place.
func TestAWorkerThatLostItsDataHasItsSessionsMadeAgain(t *testing.T) {
	run := strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	prompt := func(t *testing.T, base, sid, text string) {
		t.Helper()
		if r := call(t, "POST", base+"/session/"+sid+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, ""); r.Status != 200 {
			t.Fatalf("prompt %q: %d %.300s", text, r.Status, r.Body)
		}
	}
	create := func(t *testing.T, base, sid string, extra map[string]any) {
		t.Helper()
		body := map[string]any{"id": sid}
		for k, v := range extra {
			body[k] = v
		}
		if r := call(t, "POST", base+"/session", body, ""); r.Status != 200 {
			t.Fatalf("create %s: %d %s", sid, r.Status, r.Body)
		}
	}

	t.Run("with the journal, the session and its worker's others come back with every turn", func(t *testing.T) {
		f := startFleet(t, 2, "PLACEMENT=first", "JOURNAL=on")
		sid, child, other := "ses_lostdata_"+run, "ses_lostdata_"+run+"_child", "ses_lostdata_"+run+"_other"
		create(t, f.front.URL, sid, map[string]any{"title": "lost data"})
		create(t, f.front.URL, child, map[string]any{"parentID": sid})
		create(t, f.front.URL, other, nil)
		prompt(t, f.front.URL, sid, "first words")
		prompt(t, f.front.URL, sid, "second words")
		prompt(t, f.front.URL, other, "other words")
		for _, id := range []string{sid, child, other} {
			waitJournaled(t, f.front, f.workers[0], realIDOn(t, f.workers[0], id))
		}

		loseData(t, f.workers[0])
		messages := call(t, "GET", f.front.URL+"/session/"+sid+"/message", nil, "")
		if messages.Status != 200 {
			t.Fatalf("the first request after the worker lost its data: %d %s", messages.Status, messages.Body)
		}
		if strings.Count(string(messages.Body), `"role":"user"`) != 2 || !strings.Contains(string(messages.Body), `"sessionID":"`+sid+`"`) {
			t.Fatalf("the session made again lacks its turns: %.400s", messages.Body)
		}
		if w, n := f.holder(t, sid); w != 1 || n != 1 {
			t.Fatalf("the session is on worker %d (held by %d); want the other worker only", w, n)
		}
		// The worker's other sessions follow without being asked for, a
		// child where its parent went.
		for deadline := time.Now().Add(30 * time.Second); ; {
			_, c := f.holder(t, child)
			_, o := f.holder(t, other)
			if c == 1 && o == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the worker's other sessions did not come back: child on %d worker(s), other on %d", c, o)
			}
			time.Sleep(250 * time.Millisecond)
		}
		var children []session
		call(t, "GET", f.front.URL+"/session/"+sid+"/children", nil, "").json(t, &children)
		if len(children) != 1 || children[0].ID != child {
			t.Fatalf("the children of the session made again: %+v", children)
		}
		if r := call(t, "GET", f.front.URL+"/session/"+other+"/message", nil, ""); r.Status != 200 || !strings.Contains(string(r.Body), "other words") {
			t.Fatalf("the worker's other session: %d %.300s", r.Status, r.Body)
		}
		prompt(t, f.front.URL, sid, "third words")
		if body, _ := f.model.lastAgentBody.Load().(string); !strings.Contains(body, "first words") || !strings.Contains(body, "third words") {
			t.Fatalf("the model call after the session was made again lacks its history: %.600s", body)
		}
		// An explicit create of the id is the session, not a new one.
		if r := call(t, "POST", f.front.URL+"/session", map[string]any{"id": other}, ""); r.Status != 200 || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("create of the id again: %d %v %s", r.Status, r.Header, r.Body)
		}
		if metric(t, f.front, `caddy_session_ids_rehomes_total{cause="session_gone",namespace="default",outcome="rehomed"}`) != 3 {
			t.Fatalf("rehomes_total: want 3 sessions made again")
		}
	})

	t.Run("without a journal the 404 says why, and create_missing makes nothing", func(t *testing.T) {
		f := startFleet(t, 2, "PLACEMENT=first", "CREATE_MISSING=true")
		sid := "ses_lostnojournal_" + run
		create(t, f.front.URL, sid, nil)
		prompt(t, f.front.URL, sid, "words")
		loseData(t, f.workers[0])
		for _, path := range []string{"/session/" + sid, "/session/" + sid + "/message"} {
			r := call(t, "GET", f.front.URL+path, nil, "")
			var refusal struct {
				Name string `json:"name"`
				Data struct {
					Message   string `json:"message"`
					SessionID string `json:"sessionID"`
				} `json:"data"`
			}
			r.json(t, &refusal)
			if r.Status != 404 || refusal.Name != "NotFoundError" || refusal.Data.SessionID != sid || !strings.Contains(refusal.Data.Message, "no journal is kept") {
				t.Fatalf("GET %s: %d %s", path, r.Status, r.Body)
			}
		}
		if _, n := f.holder(t, sid); n != 0 {
			t.Fatalf("a session was made in place of the lost one, on %d worker(s)", n)
		}
	})
}
