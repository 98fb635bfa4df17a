package journal

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/move"
	"github.com/sessionid/caddy-sessionid/nativeserver"
)

func TestTheKeeperJournalsEveryTurnAndForgetsDeletedSessions(t *testing.T) {
	server, err := nativeserver.New(nativeserver.Config{DataDir: t.TempDir(), Directory: "/work"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(server)
	defer ts.Close()
	worker := strings.TrimPrefix(ts.URL, "http://")
	send := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %v %v", method, path, resp, err)
		}
		resp.Body.Close()
	}
	// The seq of the last event of a session's history on the worker.
	historyOf := func(id string) int64 {
		resp, err := http.Post(ts.URL+"/sync/history", "application/json", bytes.NewReader([]byte(`{}`)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var events []Event
		_ = json.NewDecoder(resp.Body).Decode(&events)
		last := int64(-1)
		for _, e := range events {
			if e.AggregateID == id {
				last = max(last, e.Seq)
			}
		}
		return last
	}
	store := NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test", 1<<20)
	moved := map[string]bool{"ses_moved": true}
	k := &Keeper{Store: store, Workers: move.Workers{}, Interval: time.Hour, Logger: zap.NewNop(),
		Own: func(_ context.Context, id, _ string) bool { return !moved[id] }}
	defer k.Close()
	k.Follow([]string{worker})
	// The journal holds every event up to the worker's last: the native
	// server's history keeps only a session's last update, the journal
	// each one it saw.
	journaled := func(id string, want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			events, err := store.Load(context.Background(), id)
			if err == nil && len(events) > 0 && events[len(events)-1].Seq == want && int64(len(events)) == want+1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the journal of %s holds %d events (%v), want up to seq %d", id, len(events), err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	send("POST", "/session", `{"id":"ses_kept","title":"kept"}`)
	send("POST", "/session", `{"id":"ses_moved","title":"moved"}`)
	// The pulls come from the turns ending (the interval is an hour).
	send("POST", "/session/ses_kept/message", `{"parts":[{"type":"text","text":"one"}]}`)
	journaled("ses_kept", historyOf("ses_kept"))
	send("POST", "/session/ses_moved/prompt_async", `{"parts":[{"type":"text","text":"two"}]}`)
	journaled("ses_moved", historyOf("ses_moved"))
	send("POST", "/session/ses_kept/message", `{"parts":[{"type":"text","text":"three"}]}`)
	journaled("ses_kept", historyOf("ses_kept"))

	// What the journal holds makes the session again on another worker.
	other, err := nativeserver.New(nativeserver.Config{DataDir: t.TempDir(), Directory: "/work"})
	if err != nil {
		t.Fatal(err)
	}
	ots := httptest.NewServer(other)
	defer ots.Close()
	events, _ := store.Load(context.Background(), "ses_kept")
	replay := make([]map[string]any, len(events))
	for i, e := range events {
		replay[i] = map[string]any{"id": e.ID, "aggregateID": e.AggregateID, "seq": e.Seq, "type": e.Type, "data": e.Data}
	}
	raw, _ := json.Marshal(map[string]any{"directory": "/work", "events": replay})
	if resp, err := http.Post(ots.URL+"/sync/replay", "application/json", bytes.NewReader(raw)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("replaying the journal: %v %v", resp, err)
	}
	resp, err := http.Get(ots.URL + "/session/ses_kept/message")
	if err != nil {
		t.Fatal(err)
	}
	var messages []json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&messages)
	resp.Body.Close()
	if len(messages) != 4 {
		t.Fatalf("the session made again from its journal has %d messages, want 4", len(messages))
	}

	send("DELETE", "/session/ses_kept", "")
	send("DELETE", "/session/ses_moved", "") // a move's deletion of its old copy
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok, _ := store.Position(context.Background(), "ses_kept"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the journal of a deleted session stayed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok, _ := store.Position(context.Background(), "ses_moved"); !ok {
		t.Fatal("the journal of a moved session went with its old copy")
	}
}
