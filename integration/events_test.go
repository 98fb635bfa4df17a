package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// sse is one event as a client reads it: its id line and its data line.
type sse struct{ id, data string }

// resumable reads an event stream, ids included.
type resumable struct {
	events chan sse
	cancel context.CancelFunc
	status int
}

// openEvents subscribes to url, sending lastID as Last-Event-ID when set.
func openEvents(tb testing.TB, url, lastID string) *resumable {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatalf("subscribe %s: %v", url, err)
	}
	s := &resumable{events: make(chan sse, 10000), cancel: cancel, status: resp.StatusCode}
	tb.Cleanup(cancel)
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return s
	}
	go func() {
		defer resp.Body.Close()
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		var ev sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				s.events <- ev
				ev = sse{}
			case strings.HasPrefix(line, "id: "):
				ev.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return s
}

// until collects events until one satisfies done, or fails after timeout.
func (s *resumable) until(tb testing.TB, timeout time.Duration, done func(sse) bool) sseList {
	tb.Helper()
	var seen sseList
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				tb.Fatalf("event stream ended after %d events", len(seen))
			}
			seen = append(seen, ev)
			if done(ev) {
				return seen
			}
		case <-deadline:
			tb.Fatalf("no awaited event within %v; saw %d events", timeout, len(seen))
		}
	}
}

func (s *resumable) next(tb testing.TB) sse {
	tb.Helper()
	return s.until(tb, 30*time.Second, func(sse) bool { return true })[0]
}

// idleOf is the event that ends a prompt of a session.
func idleOf(id string) func(sse) bool {
	return func(ev sse) bool {
		return strings.Contains(ev.data, `"type":"session.idle"`) && strings.Contains(ev.data, id)
	}
}

// withIDs keeps the events that carry an id: everything but greetings and
// heartbeats.
// withIDs keeps the events a resume replays: those with an id, but for the
// greeting and heartbeats, which carry the client's position as their id and
// are for live readers only.
func withIDs(evs []sse) []sse {
	var out []sse
	for _, ev := range evs {
		if ev.id != "" && !isPositionOnly(ev) {
			out = append(out, ev)
		}
	}
	return out
}

func isPositionOnly(ev sse) bool {
	return strings.Contains(ev.data, `"type":"server.connected"`) || strings.Contains(ev.data, `"type":"server.heartbeat"`)
}

func promptAsync(tb testing.TB, base, id, text string) {
	tb.Helper()
	r := call(tb, "POST", base+"/session/"+id+"/prompt_async", map[string]any{"parts": []any{map[string]any{"type": "text", "text": text}}}, "")
	if r.Status != 204 {
		tb.Fatalf("prompt_async %s: %d %s", id, r.Status, r.Body)
	}
}

func createSession(tb testing.TB, base, id string) {
	tb.Helper()
	if r := call(tb, "POST", base+"/session", map[string]any{"id": id}, ""); r.Status != 200 {
		tb.Fatalf("create %s: %d %s", id, r.Status, r.Body)
	}
}

// admin returns a Caddy's admin address.
func (c *caddy) admin() string {
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "ADMIN="); ok {
			return v
		}
	}
	return ""
}

// upstreamRequests is how many requests Caddy's reverse_proxy has open to
// each upstream, from its admin endpoint.
func upstreamRequests(tb testing.TB, c *caddy) int {
	tb.Helper()
	r := call(tb, "GET", "http://"+c.admin()+"/reverse_proxy/upstreams", nil, "")
	var upstreams []struct {
		Address     string `json:"address"`
		NumRequests int    `json:"num_requests"`
	}
	r.json(tb, &upstreams)
	total := 0
	for _, u := range upstreams {
		total += u.NumRequests
	}
	return total
}

// reloadForce makes a running Caddy load its config again, even unchanged.
func reloadForce(tb testing.TB, c *caddy) {
	tb.Helper()
	cmd := exec.Command(c.bin, "reload", "--force", "--config", c.config, "--address", c.admin())
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), c.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// TestResumableEventStreams is docs/events.md as a specification, against
// stock opencode behind the built Caddy.
func TestResumableEventStreams(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc)
	oc.waitHealthy(t)
	id := func(name string) string { return fmt.Sprintf("ses_events_%s_%d", name, time.Now().UnixNano()) }

	t.Run("a client that disconnects mid-prompt and resumes gets exactly the events a client that stayed got", func(t *testing.T) {
		steady := openEvents(t, proxy.URL+"/event", "")
		dropping := openEvents(t, proxy.URL+"/event", "")
		for _, s := range []*resumable{steady, dropping} {
			if greeting := s.next(t); !strings.Contains(greeting.data, "server.connected") {
				t.Fatalf("first event %+v", greeting)
			}
		}
		clientID := id("drop")
		createSession(t, proxy.URL, clientID)
		promptAsync(t, proxy.URL, clientID, "hello")
		// Gone as soon as the prompt is under way.
		seen := dropping.until(t, 60*time.Second, func(ev sse) bool {
			return strings.Contains(ev.data, `"type":"session.status"`) && strings.Contains(ev.data, clientID)
		})
		last := seen[len(seen)-1].id
		dropping.cancel()

		all := steady.until(t, 120*time.Second, idleOf(clientID))
		resumed := openEvents(t, proxy.URL+"/event", last)
		if greeting := resumed.next(t); !strings.Contains(greeting.data, "server.connected") {
			t.Fatalf("a resumed stream starts with the greeting, got %+v", greeting)
		}
		replayed := withIDs(resumed.until(t, 30*time.Second, idleOf(clientID)))

		var missed []sse
		for i, ev := range withIDs(all) {
			if ev.id == last {
				missed = withIDs(all)[i+1:]
			}
		}
		if len(missed) < 3 {
			t.Fatalf("the dropped client missed only %d events; the test proves little", len(missed))
		}
		if len(replayed) != len(missed) {
			t.Fatalf("resumed with %d events, the client that stayed got %d after %s", len(replayed), len(missed), last)
		}
		for i := range missed {
			if replayed[i] != missed[i] {
				t.Fatalf("event %d differs:\nresumed: %+v\nstayed:  %+v", i, replayed[i], missed[i])
			}
		}
		real := realID(t, oc, clientID)
		for _, ev := range replayed {
			if strings.Contains(ev.data, real) {
				t.Fatalf("a replayed event carries the real id %s: %s", real, ev.data)
			}
		}
		t.Logf("the client missed %d events mid-prompt and got all of them back", len(missed))
	})

	t.Run("a client that saw only the greeting and dropped resumes from it and gets every event of a prompt", func(t *testing.T) {
		steady := openEvents(t, proxy.URL+"/event", "")
		steady.next(t)
		idle := openEvents(t, proxy.URL+"/event", "")
		greeting := idle.next(t)
		if !strings.Contains(greeting.data, "server.connected") || greeting.id == "" {
			t.Fatalf("the greeting %+v carries no resume point", greeting)
		}
		idle.cancel() // nothing but the greeting seen

		clientID := id("greeted")
		createSession(t, proxy.URL, clientID)
		promptAsync(t, proxy.URL, clientID, "hello")
		all := withIDs(steady.until(t, 120*time.Second, idleOf(clientID)))

		resumed := openEvents(t, proxy.URL+"/event", greeting.id)
		if g := resumed.next(t); !strings.Contains(g.data, "server.connected") {
			t.Fatalf("the resumed stream starts with %+v", g)
		}
		replayed := withIDs(resumed.until(t, 30*time.Second, idleOf(clientID)))
		if len(all) < 3 || len(replayed) != len(all) {
			t.Fatalf("resumed from the greeting with %d events; the client that stayed got %d", len(replayed), len(all))
		}
		for i := range all {
			if replayed[i] != all[i] {
				t.Fatalf("event %d differs:\nresumed: %+v\nstayed:  %+v", i, replayed[i], all[i])
			}
		}
		for _, ev := range replayed {
			if strings.Contains(ev.data, "session_ids.resync") {
				t.Fatalf("a resume from the greeting was told to resync: %+v", ev)
			}
		}
	})

	t.Run("100 clients of one stream are one upstream subscription, and each gets the prompt's events", func(t *testing.T) {
		first := openEvents(t, proxy.URL+"/global/event", "")
		first.next(t)
		before := upstreamRequests(t, proxy)
		if before < 1 {
			t.Fatalf("Caddy counts %d requests open upstream with a client streaming: the count would prove nothing", before)
		}
		clients := make([]*resumable, 100)
		for i := range clients {
			clients[i] = openEvents(t, proxy.URL+"/global/event", "")
			clients[i].next(t)
		}
		if after := upstreamRequests(t, proxy); after != before {
			t.Fatalf("Caddy has %d requests open upstream with 101 clients of /global/event, %d with one", after, before)
		}
		clientID := id("hundred")
		createSession(t, proxy.URL, clientID)
		promptAsync(t, proxy.URL, clientID, "hello")
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.until(t, 120*time.Second, idleOf(clientID))
			}()
		}
		wg.Wait()
	})

	t.Run("a stalled client does not stall the others", func(t *testing.T) {
		stalled, err := net.Dial("tcp", strings.TrimPrefix(proxy.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer stalled.Close()
		fmt.Fprint(stalled, "GET /event HTTP/1.1\r\nHost: localhost\r\n\r\n") // and never read
		reader := openEvents(t, proxy.URL+"/event", "")
		reader.next(t)
		clientID := id("stall")
		createSession(t, proxy.URL, clientID)
		promptAsync(t, proxy.URL, clientID, "hello")
		reader.until(t, 120*time.Second, idleOf(clientID))
	})

	t.Run("the OpenAPI document declares Last-Event-ID and the resync event", func(t *testing.T) {
		r := call(t, "GET", proxy.URL+"/doc", nil, "")
		var doc struct {
			Paths map[string]map[string]struct {
				Parameters []struct{ Name, In string }
			}
			Components struct{ Schemas map[string]any }
		}
		r.json(t, &doc)
		for _, path := range []string{"/event", "/global/event"} {
			names := ""
			for _, p := range doc.Paths[path]["get"].Parameters {
				names += p.In + ":" + p.Name + " "
			}
			if !strings.Contains(names, "header:Last-Event-ID") || !strings.Contains(names, "query:lastEventID") {
				t.Errorf("%s parameters: %s", path, names)
			}
		}
		if doc.Components.Schemas["SessionIdsResyncEvent"] == nil {
			t.Error("no SessionIdsResyncEvent schema")
		}
	})

	t.Run("a resume across caddy reload misses nothing", func(t *testing.T) {
		client := openEvents(t, proxy.URL+"/event", "")
		client.next(t)
		before := id("before_reload")
		createSession(t, proxy.URL, before)
		last := client.until(t, 30*time.Second, func(ev sse) bool { return strings.Contains(ev.data, before) }).ID()
		client.cancel()
		reloadForce(t, proxy)
		after := id("after_reload")
		createSession(t, proxy.URL, after)
		promptAsync(t, proxy.URL, after, "hello")
		resumed := openEvents(t, proxy.URL+"/event", last)
		resumed.next(t)
		got := resumed.until(t, 120*time.Second, idleOf(after))
		for _, ev := range got {
			if strings.Contains(ev.data, "session_ids.resync") {
				t.Fatalf("a resync after a reload: %s", ev.data)
			}
		}
		if !strings.Contains(got[0].data, `"type":"session.created"`) || !strings.Contains(got[0].data, after) {
			t.Fatalf("the first event after %s is %s, want the session.created of %s", last, got[0].data, after)
		}
	})

	t.Run("after a Caddy restart an old id gets the resync event, then the live stream", func(t *testing.T) {
		client := openEvents(t, proxy.URL+"/event", "")
		client.next(t)
		clientID := id("restart")
		createSession(t, proxy.URL, clientID)
		last := client.until(t, 30*time.Second, func(ev sse) bool { return strings.Contains(ev.data, clientID) }).ID()
		client.cancel()
		proxy.restart(false)
		resumed := openEvents(t, proxy.URL+"/event", last)
		resumed.next(t)
		resync := resumed.next(t)
		var ev struct {
			Type       string
			Properties struct{ Reason, LastEventID string }
		}
		if err := json.Unmarshal([]byte(resync.data), &ev); err != nil || ev.Type != "session_ids.resync" ||
			ev.Properties.Reason != "unknown" || ev.Properties.LastEventID != last || resync.id == "" {
			t.Fatalf("after a restart, resuming from %s: %+v", last, resync)
		}
		promptAsync(t, proxy.URL, clientID, "hello")
		resumed.until(t, 120*time.Second, idleOf(clientID))
	})

	t.Run("a resume after retain_for gets the resync event", func(t *testing.T) {
		short := startCaddy(t, oc, "EVENTS_RETAIN_FOR=1s")
		client := openEvents(t, short.URL+"/event", "")
		client.next(t)
		clientID := id("expired")
		createSession(t, short.URL, clientID)
		last := client.until(t, 30*time.Second, func(ev sse) bool { return strings.Contains(ev.data, clientID) }).ID()
		client.cancel()
		promptAsync(t, short.URL, clientID, "hello")
		time.Sleep(2500 * time.Millisecond)
		resumed := openEvents(t, short.URL+"/event", last)
		resumed.next(t)
		if ev := resumed.next(t); !strings.Contains(ev.data, `"reason":"expired"`) {
			t.Fatalf("resuming from %s after retain_for: %+v", last, ev)
		}
	})
}

// sseList is events in the order read.
type sseList []sse

// ID is the id of the last event.
func (l sseList) ID() string { return l[len(l)-1].id }
