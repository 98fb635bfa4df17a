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
