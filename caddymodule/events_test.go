package caddymodule

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/idmap"
)

// fakeStream is an upstream's event stream that the test feeds: every
// subscription gets the greeting, then every event published while it is
// subscribed. It counts the subscriptions open and refuses requests
// without the password, as opencode with OPENCODE_SERVER_PASSWORD does.
type fakeStream struct {
	password string

	mu     sync.Mutex
	subs   map[chan string]bool
	opened atomic.Int64 // subscriptions ever granted
	open   atomic.Int64 // subscriptions open now
}

func newFakeStream() *fakeStream { return &fakeStream{subs: map[chan string]bool{}} }

func (f *fakeStream) publish(format string, args ...any) {
	ev := "data: " + fmt.Sprintf(format, args...) + "\n\n"
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		sub <- ev
	}
}

// dropAll ends every open subscription, as a restarting upstream does.
func (f *fakeStream) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		close(sub)
		delete(f.subs, sub)
	}
}

func (f *fakeStream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if !isEventStream(r.URL.Path) {
		return nil // the handler's own HEAD /global/health, say
	}
	if f.password != "" && r.Header.Get("Authorization") != f.password {
		w.Header().Set("WWW-Authenticate", `Basic realm="Secure Area"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("Unauthorized"))
		return nil
	}
	sub := make(chan string, 100000)
	f.mu.Lock()
	f.subs[sub] = true
	f.mu.Unlock()
	f.opened.Add(1)
	f.open.Add(1)
	defer f.open.Add(-1)
	defer func() {
		f.mu.Lock()
		delete(f.subs, sub)
		f.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "data: {\"type\":\"server.connected\",\"properties\":{}}\n\n")
	_ = http.NewResponseController(w).Flush()
	for {
		select {
		case ev, ok := <-sub:
			if !ok {
				return nil
			}
			if _, err := fmt.Fprint(w, ev); err != nil {
				return err
			}
			_ = http.NewResponseController(w).Flush()
		case <-r.Context().Done():
			return nil
		}
	}
}

// eventsFront serves a handler with resumable streams in front of next over
// real HTTP, as Caddy would.
func eventsFront(t testing.TB, events Events, next caddyhttp.Handler) (*Handler, string) {
	t.Helper()
	h := fleetHandler(t)
	h.Mode = ModeDirect
	h.Namespace = t.Name()
	h.Events = &events
	if err := h.provisionEvents(); err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
		if err := h.ServeHTTP(w, r, next); err != nil {
			status := http.StatusInternalServerError // as Caddy answers an error
			if he, ok := err.(caddyhttp.HandlerError); ok {
				status = he.StatusCode
			}
			http.Error(w, err.Error(), status)
		}
	}))
	t.Cleanup(func() {
		front.CloseClientConnections()
		front.Close()
		h.cleanupEvents()
	})
	return h, front.URL
}

// sse is an event as a client reads it.
type sse struct{ id, data string }

// subscriber reads one event stream.
type subscriber struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	events chan sse
}

func subscribe(t *testing.T, url string, header http.Header) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &subscriber{t: t, resp: resp, cancel: cancel, events: make(chan sse, 100000)}
	t.Cleanup(s.close)
	if resp.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		defer close(s.events)
		reader := bufio.NewReader(resp.Body)
		var ev sse
		for {
			line, err := reader.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
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

func (s *subscriber) close() { s.cancel(); s.resp.Body.Close() }

// next returns the next event, failing after a few seconds.
func (s *subscriber) next() sse {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		s.t.Fatal("no event within 5s")
	}
	return sse{}
}

// until returns the events up to and including the first whose data
// contains marker.
func (s *subscriber) until(marker string) []sse {
	s.t.Helper()
	var got []sse
	for {
		ev := s.next()
		got = append(got, ev)
		if strings.Contains(ev.data, marker) {
			return got
		}
	}
}

func datas(evs []sse) string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.data)
	}
	return strings.Join(out, "\n")
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestResumableEvents(t *testing.T) {
	t.Run("every event carries an id, and a client that resumes gets exactly what it missed, then the live stream", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{}, upstream)
		steady := subscribe(t, url+"/event", nil)
		if greeting := steady.next(); !strings.Contains(greeting.data, "server.connected") || greeting.id != "" {
			t.Fatalf("first event %+v, want the greeting without an id", greeting)
		}
		dropping := subscribe(t, url+"/event", nil)
		dropping.next() // greeting
		upstream.publish(`{"type":"n","properties":{"n":1}}`)
		upstream.publish(`{"type":"n","properties":{"n":2}}`)
		got := dropping.until(`"n":2`)
		last := got[len(got)-1].id
		if last == "" || got[0].id == "" || got[0].id == last {
			t.Fatalf("events without distinct ids: %+v", got)
		}
		dropping.close()
		for n := 3; n <= 6; n++ {
			upstream.publish(`{"type":"n","properties":{"n":%d}}`, n)
		}
		resumed := subscribe(t, url+"/event", http.Header{"Last-Event-Id": {last}})
		if greeting := resumed.next(); !strings.Contains(greeting.data, "server.connected") {
			t.Fatalf("a resumed stream opens with the greeting too, got %+v", greeting)
		}
		upstream.publish(`{"type":"n","properties":{"n":7}}`)
		want := steady.until(`"n":7`)
		gotResumed := resumed.until(`"n":7`)
		if datas(gotResumed) != datas(want[2:]) {
			t.Fatalf("resumed client got\n%s\nthe client that never left got, after what the other had\n%s", datas(gotResumed), datas(want[2:]))
		}
		for i := range gotResumed {
			if gotResumed[i].id != want[2+i].id {
				t.Fatalf("event %d: id %q for one client, %q for the other", i, gotResumed[i].id, want[2+i].id)
			}
		}
		if upstream.opened.Load() != 1 {
			t.Fatalf("three clients of one stream made %d upstream subscriptions, want 1", upstream.opened.Load())
		}
	})

	t.Run("the lastEventID query parameter resumes like the header", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{}, upstream)
		first := subscribe(t, url+"/event", nil)
		first.next()
		upstream.publish(`{"type":"n","properties":{"n":1}}`)
		id := first.next().id
		upstream.publish(`{"type":"n","properties":{"n":2}}`)
		first.next()
		resumed := subscribe(t, url+"/event?lastEventID="+id, nil)
		resumed.next() // greeting
		if ev := resumed.next(); !strings.Contains(ev.data, `"n":2`) {
			t.Fatalf("after %s came %+v", id, ev)
		}
		if upstream.opened.Load() != 1 {
			t.Fatal("the resume parameter is not part of the stream's scope")
		}
	})

	t.Run("an id older than what is retained, or not this stream's, gets the resync event first", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{RetainEvents: 3}, upstream)
		client := subscribe(t, url+"/global/event", nil)
		client.next()
		upstream.publish(`{"payload":{"type":"n","properties":{"n":1}}}`)
		old := client.next().id
		for n := 2; n <= 10; n++ {
			upstream.publish(`{"payload":{"type":"n","properties":{"n":%d}}}`, n)
		}
		upToTen := client.until(`"n":10`)
		newest := upToTen[len(upToTen)-1].id
		for _, c := range []struct{ id, reason string }{
			{old, "expired"},
			{"abcdefghij-5", "unknown"},
			{"garbage", "unknown"},
		} {
			resumed := subscribe(t, url+"/global/event", http.Header{"Last-Event-Id": {c.id}})
			resumed.next() // greeting
			resync := resumed.next()
			wantData := `{"payload":{"properties":{"lastEventID":"` + c.id + `","message":"` + resyncMessages[eventlog.Gap(c.reason)] + `","reason":"` + c.reason + `"},"type":"session_ids.resync"}}`
			if resync.data != wantData {
				t.Fatalf("resume from %s: %s\nwant %s", c.id, resync.data, wantData)
			}
			if resync.id != newest {
				t.Fatalf("the resync event's id %q is not the newest event's %q", resync.id, newest)
			}
			upstream.publish(`{"payload":{"type":"n","properties":{"n":"after-%s"}}}`, c.reason)
			if ev := resumed.next(); !strings.Contains(ev.data, "after-"+c.reason) {
				t.Fatalf("after the resync came %+v, want the live stream", ev)
			}
			newest = client.next().id
		}
	})

	t.Run("clients share a subscription only with the same credentials, and a refused client gets the upstream's refusal", func(t *testing.T) {
		upstream := newFakeStream()
		upstream.password = "Basic right"
		_, url := eventsFront(t, Events{}, upstream)
		a := subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
		a.next()
		wrong := subscribe(t, url+"/event", http.Header{"Authorization": {"Basic wrong"}})
		if wrong.resp.StatusCode != http.StatusUnauthorized || wrong.resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("wrong credentials: %d %v, want opencode's 401", wrong.resp.StatusCode, wrong.resp.Header)
		}
		none := subscribe(t, url+"/event", nil)
		if none.resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no credentials: %d", none.resp.StatusCode)
		}
		b := subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
		b.next()
		other := subscribe(t, url+"/event?directory=/elsewhere", http.Header{"Authorization": {"Basic right"}})
		other.next()
		if got := upstream.opened.Load(); got != 2 {
			t.Fatalf("%d subscriptions granted, want 2: one per directory", got)
		}
	})

	t.Run("heartbeats reach live clients but are not replayed", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{}, upstream)
		first := subscribe(t, url+"/event", nil)
		first.next()
		upstream.publish(`{"type":"n","properties":{"n":1}}`)
		id := first.next().id
		upstream.publish(`{"type":"server.heartbeat","properties":{}}`)
		if hb := first.next(); !strings.Contains(hb.data, "server.heartbeat") || hb.id != "" {
			t.Fatalf("heartbeat %+v, want it live and without an id", hb)
		}
		upstream.publish(`{"type":"n","properties":{"n":2}}`)
		first.next()
		resumed := subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
		resumed.next()
		if ev := resumed.next(); !strings.Contains(ev.data, `"n":2`) {
			t.Fatalf("replayed %+v, want n=2 without the heartbeat", ev)
		}
	})

	t.Run("the subscription lingers for clients that come back, then ends", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{Linger: caddy.Duration(300 * time.Millisecond)}, upstream)
		client := subscribe(t, url+"/event", nil)
		client.next()
		upstream.publish(`{"type":"n","properties":{"n":1}}`)
		id := client.next().id
		client.close()
		time.Sleep(50 * time.Millisecond)
		upstream.publish(`{"type":"n","properties":{"n":2}}`)
		back := subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
		back.next()
		if ev := back.next(); !strings.Contains(ev.data, `"n":2`) {
			t.Fatalf("an event sent while no client was connected: got %+v", ev)
		}
		back.close()
		waitFor(t, "the subscription to end after linger", func() bool { return upstream.open.Load() == 0 })
		late := subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
		late.next()
		if ev := late.next(); !strings.Contains(ev.data, `"reason":"unknown"`) {
			t.Fatalf("a client back after the stream ended: %+v, want a resync", ev)
		}
	})

	t.Run("an upstream stream that breaks off is subscribed again, and clients are told events may be missing", func(t *testing.T) {
		upstream := newFakeStream()
		_, url := eventsFront(t, Events{}, upstream)
		client := subscribe(t, url+"/event", nil)
		client.next()
		upstream.dropAll()
		waitFor(t, "a new subscription", func() bool { return upstream.opened.Load() == 2 })
		ev := client.next()
		if !strings.Contains(ev.data, `"reason":"upstream_reconnected"`) || ev.id == "" {
			t.Fatalf("after the upstream's stream broke: %+v", ev)
		}
		upstream.publish(`{"type":"n","properties":{"n":1}}`)
		if ev := client.next(); !strings.Contains(ev.data, `"n":1`) {
			t.Fatalf("then %+v", ev)
		}
	})

	t.Run("a client that stops reading is dropped after write_timeout; the others and memory are unaffected", func(t *testing.T) {
		upstream := newFakeStream()
		h, url := eventsFront(t, Events{RetainEvents: 100, WriteTimeout: caddy.Duration(200 * time.Millisecond)}, upstream)
		reader := subscribe(t, url+"/event", nil)
		reader.next()
		stalled, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer stalled.Close()
		fmt.Fprintf(stalled, "GET /event HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
		waitFor(t, "both clients", func() bool { return h.hubs.only().subscribers() == 2 })
		big := strings.Repeat("x", 4096)
		for n := 1; n <= 2000; n++ {
			upstream.publish(`{"type":"n","properties":{"n":%d,"pad":%q}}`, n, big)
			if n%100 == 0 {
				reader.until(fmt.Sprintf(`"n":%d,`, n))
			}
		}
		waitFor(t, "the stalled client to be dropped", func() bool { return h.hubs.only().subscribers() == 1 })
		if events, _ := h.hubs.only().log.Size(); events > 100 {
			t.Fatalf("the log holds %d events, over its limit of 100", events)
		}
	})
}

// only returns the registry's one hub.
func (g *hubRegistry) only() *eventHub {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, hub := range g.hubs {
		return hub
	}
	return nil
}

// twoWorkerFleet serves resumable streams in front of two workers, each
// an upstream stream of its own, behind lb_policy session_ids.
func twoWorkerFleet(t *testing.T, w1, w2 *fakeStream) (*Handler, string) {
	t.Helper()
	dials := []string{"w1:1", "w2:2"}
	next := byWorker(map[string]func(http.ResponseWriter, *http.Request){
		"w1:1": func(w http.ResponseWriter, r *http.Request) { _ = w1.ServeHTTP(w, r) },
		"w2:2": func(w http.ResponseWriter, r *http.Request) { _ = w2.ServeHTTP(w, r) },
	}, dials...)
	h, url := eventsFront(t, Events{}, next)
	h.fleet.pool.Store(newKnownPool(testPool(dials...)))
	return h, url
}

func TestTheFleetsMergedStreamIsResumable(t *testing.T) {
	w1, w2 := newFakeStream(), newFakeStream()
	_, url := twoWorkerFleet(t, w1, w2)
	client := subscribe(t, url+"/event", nil)
	client.next()
	waitFor(t, "both workers subscribed", func() bool { return w1.open.Load() == 1 && w2.open.Load() == 1 })
	w1.publish(`{"type":"n","properties":{"from":"w1"}}`)
	id := client.next().id
	w2.publish(`{"type":"n","properties":{"from":"w2"}}`)
	got := client.until(`"from":"w2"`)
	w1.publish(`{"type":"n","properties":{"from":"w1","n":2}}`)
	got = append(got, client.until(`"n":2`)...)
	if strings.Count(datas(got), "server.connected") != 0 || len(got) != 2 {
		t.Fatalf("the merged stream greets once: %s", datas(got))
	}
	resumed := subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
	if ev := resumed.next(); !strings.Contains(ev.data, "server.connected") {
		t.Fatalf("greeting %+v", ev)
	}
	if replay := resumed.until(`"n":2`); datas(replay) != datas(got) {
		t.Fatalf("replayed\n%s\nwant\n%s", datas(replay), datas(got))
	}
}

func TestAFleetStreamThatNoWorkerGrantsIsRefusedAsTheyRefuseIt(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	w1, w2 := newFakeStream(), newFakeStream()
	w1.password, w2.password = "Basic right", "Basic right"
	_, url := twoWorkerFleet(t, w1, w2)
	if wrong := subscribe(t, url+"/event", http.Header{"Authorization": {"Basic wrong"}}); wrong.resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong credentials on every worker: %d, want their 401", wrong.resp.StatusCode)
	}
	right := subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
	right.next()

	down := byWorker(map[string]func(http.ResponseWriter, *http.Request){}, dials...) // every worker answers 503
	h2, url2 := eventsFront(t, Events{}, down)
	h2.fleet.pool.Store(newKnownPool(testPool(dials...)))
	if resp := subscribe(t, url2+"/event", nil); resp.resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("no worker available: %d, want 503", resp.resp.StatusCode)
	}
}

func TestAStreamFollowsACreateAnotherInstanceHasUnderWay(t *testing.T) {
	upstream := newFakeStream()
	h, url := eventsFront(t, Events{}, upstream)
	h.Mode = ModeMapping
	ctx := context.Background()
	// Another Caddy on the same storage: it has sent the create upstream
	// and will store the mapping a moment after the upstream's event.
	there, err := idmap.NewIndex(h.index.Store, idmap.IndexConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer there.Close()
	if err := there.Store.SavePending(ctx, idmap.Pending{ClientID: "ses_mine", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	client := subscribe(t, url+"/event", nil)
	client.next()
	go func() {
		time.Sleep(150 * time.Millisecond)
		_ = there.Save(ctx, idmap.Mapping{ClientID: "ses_mine", RealID: "ses_upstream1"})
		_ = there.Store.RemovePending(ctx, "ses_mine")
	}()
	upstream.publish(`{"type":"session.created","properties":{"sessionID":"ses_upstream1","info":{"id":"ses_upstream1","metadata":{"clientSessionID":"ses_mine"}}}}`)
	upstream.publish(`{"type":"session.idle","properties":{"sessionID":"ses_upstream1"}}`)
	for range 2 {
		if ev := client.next(); strings.Contains(ev.data, "ses_upstream1") || !strings.Contains(ev.data, `"sessionID":"ses_mine"`) {
			t.Fatalf("an event of the new session reached the client as %s", ev.data)
		}
	}
}

func TestAfterAReloadAStreamIsRewrittenByTheNewConfig(t *testing.T) {
	upstream := newFakeStream()
	old, url := eventsFront(t, Events{}, upstream)
	old.Mode = ModeMapping
	client := subscribe(t, url+"/event", nil)
	client.next()

	// The new config's handler: same namespace, its own index (a Redis
	// storage is a new client in each config, and the old one is closed).
	renewed := fleetHandler(t)
	renewed.Mode, renewed.Namespace, renewed.Events = ModeMapping, old.Namespace, &Events{}
	if err := renewed.provisionEvents(); err != nil {
		t.Fatal(err)
	}
	defer renewed.cleanupEvents()
	if err := renewed.index.Save(context.Background(), idmap.Mapping{ClientID: "ses_mine", RealID: "ses_upstream2"}); err != nil {
		t.Fatal(err)
	}
	old.cleanupEvents() // the old config is unloaded

	upstream.publish(`{"type":"session.idle","properties":{"sessionID":"ses_upstream2"}}`)
	if ev := client.next(); !strings.Contains(ev.data, `"sessionID":"ses_mine"`) {
		t.Fatalf("after the reload the stream carried %s, want the id the new config maps", ev.data)
	}
	if upstream.opened.Load() != 1 {
		t.Fatalf("the reload made %d subscriptions, want the one that was running", upstream.opened.Load())
	}
}
