package events

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// passIDs are the ids of direct mode: events pass as they are.
type passIDs struct{}

func (passIDs) Mode() string                              { return "direct" }
func (passIDs) Event(_ context.Context, ev []byte) []byte { return ev }

// fixedWorkers is a fleet whose pool is known from the start.
type fixedWorkers struct{ pool *upstream.Pool }

func (fixedWorkers) Learn(*http.Request, caddyhttp.Handler) {}
func (w fixedWorkers) Pool() *upstream.Pool                 { return w.pool }

// The headers eventsFront takes the client IP Caddy would have found and
// the caller the gate would have admitted from.
const (
	testClientIP = "X-Test-Client-Ip"
	testCaller   = "X-Test-Caller"
)

// eventsFront serves the streams of one handler in front of next over real
// HTTP, as Caddy would: resumable, or with events off merged from the
// workers dials (none: one upstream behind next).
func eventsFront(t testing.TB, config Config, next caddyhttp.Handler, dials ...string) (*Streams, string) {
	t.Helper()
	workers := fixedWorkers{}
	if len(dials) > 0 {
		workers.pool = upstream.NewPool(upstreamtest.Pool(dials...))
	}
	s, err := New(&config, t.Name(), passIDs{}, workers, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// What Caddy and the gate set before the handler: the client IP
		// (from trusted_proxies) and the caller, here from test headers.
		vars := map[string]any{}
		if ip := r.Header.Get(testClientIP); ip != "" {
			vars[caddyhttp.ClientIPVarKey] = ip
		}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		if caller := r.Header.Get(testCaller); caller != "" {
			r = access.WithCaller(r, access.Caller{ID: caller})
		}
		serve := s.Serve
		if !s.Resumable() {
			serve = s.ServeMerged
		}
		if err := serve(w, r, next); err != nil {
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
		s.Close()
	})
	return s, front.URL
}

func TestResumableEvents(t *testing.T) {
	t.Run("every event carries an id, and a client that resumes gets exactly what it missed, then the live stream", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{}, upstream)
		steady := upstreamtest.Subscribe(t, url+"/event", nil)
		if greeting := steady.Next(); !strings.Contains(greeting.Data, "server.connected") || greeting.ID == "" {
			t.Fatalf("first event %+v, want the greeting with the client's position as its id", greeting)
		}
		dropping := upstreamtest.Subscribe(t, url+"/event", nil)
		dropping.Next() // greeting
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		upstream.Publish(`{"type":"n","properties":{"n":2}}`)
		got := dropping.Until(`"n":2`)
		last := got[len(got)-1].ID
		if last == "" || got[0].ID == "" || got[0].ID == last {
			t.Fatalf("events without distinct ids: %+v", got)
		}
		dropping.Close()
		for n := 3; n <= 6; n++ {
			upstream.Publish(`{"type":"n","properties":{"n":%d}}`, n)
		}
		resumed := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {last}})
		if greeting := resumed.Next(); !strings.Contains(greeting.Data, "server.connected") {
			t.Fatalf("a resumed stream opens with the greeting too, got %+v", greeting)
		}
		upstream.Publish(`{"type":"n","properties":{"n":7}}`)
		want := steady.Until(`"n":7`)
		gotResumed := resumed.Until(`"n":7`)
		if upstreamtest.Datas(gotResumed) != upstreamtest.Datas(want[2:]) {
			t.Fatalf("resumed client got\n%s\nthe client that never left got, after what the other had\n%s", upstreamtest.Datas(gotResumed), upstreamtest.Datas(want[2:]))
		}
		for i := range gotResumed {
			if gotResumed[i].ID != want[2+i].ID {
				t.Fatalf("event %d: id %q for one client, %q for the other", i, gotResumed[i].ID, want[2+i].ID)
			}
		}
		if upstream.Opened.Load() != 1 {
			t.Fatalf("three clients of one stream made %d upstream subscriptions, want 1", upstream.Opened.Load())
		}
	})

	t.Run("the lastEventID query parameter resumes like the header", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{}, upstream)
		first := upstreamtest.Subscribe(t, url+"/event", nil)
		first.Next()
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		id := first.Next().ID
		upstream.Publish(`{"type":"n","properties":{"n":2}}`)
		first.Next()
		resumed := upstreamtest.Subscribe(t, url+"/event?lastEventID="+id, nil)
		resumed.Next() // greeting
		if ev := resumed.Next(); !strings.Contains(ev.Data, `"n":2`) {
			t.Fatalf("after %s came %+v", id, ev)
		}
		if upstream.Opened.Load() != 1 {
			t.Fatal("the resume parameter is not part of the stream's scope")
		}
	})

	t.Run("an id older than what is retained, or not this stream's, gets the resync event first", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{RetainEvents: 3}, upstream)
		client := upstreamtest.Subscribe(t, url+"/global/event", nil)
		client.Next()
		upstream.Publish(`{"payload":{"type":"n","properties":{"n":1}}}`)
		old := client.Next().ID
		for n := 2; n <= 10; n++ {
			upstream.Publish(`{"payload":{"type":"n","properties":{"n":%d}}}`, n)
		}
		upToTen := client.Until(`"n":10`)
		newest := upToTen[len(upToTen)-1].ID
		for _, c := range []struct{ id, reason string }{
			{old, "expired"},
			{"abcdefghij-5", "unknown"},
			{"garbage", "unknown"},
		} {
			resumed := upstreamtest.Subscribe(t, url+"/global/event", http.Header{"Last-Event-Id": {c.id}})
			resumed.Next() // greeting
			resync := resumed.Next()
			wantData := `{"payload":{"properties":{"lastEventID":"` + c.id + `","message":"` + resyncMessages[eventlog.Gap(c.reason)] + `","reason":"` + c.reason + `"},"type":"session_ids.resync"}}`
			if resync.Data != wantData {
				t.Fatalf("resume from %s: %s\nwant %s", c.id, resync.Data, wantData)
			}
			if resync.ID != newest {
				t.Fatalf("the resync event's id %q is not the newest event's %q", resync.ID, newest)
			}
			upstream.Publish(`{"payload":{"type":"n","properties":{"n":"after-%s"}}}`, c.reason)
			if ev := resumed.Next(); !strings.Contains(ev.Data, "after-"+c.reason) {
				t.Fatalf("after the resync came %+v, want the live stream", ev)
			}
			newest = client.Next().ID
		}
	})

	t.Run("clients share a subscription only with the same credentials, and a refused client gets the upstream's refusal", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		upstream.Password = "Basic right"
		_, url := eventsFront(t, Config{}, upstream)
		a := upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
		a.Next()
		wrong := upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic wrong"}})
		if wrong.Resp.StatusCode != http.StatusUnauthorized || wrong.Resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("wrong credentials: %d %v, want opencode's 401", wrong.Resp.StatusCode, wrong.Resp.Header)
		}
		none := upstreamtest.Subscribe(t, url+"/event", nil)
		if none.Resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no credentials: %d", none.Resp.StatusCode)
		}
		b := upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
		b.Next()
		other := upstreamtest.Subscribe(t, url+"/event?directory=/elsewhere", http.Header{"Authorization": {"Basic right"}})
		other.Next()
		if got := upstream.Opened.Load(); got != 2 {
			t.Fatalf("%d subscriptions granted, want 2: one per directory", got)
		}
	})

	t.Run("heartbeats reach live clients but are not replayed", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{}, upstream)
		first := upstreamtest.Subscribe(t, url+"/event", nil)
		first.Next()
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		id := first.Next().ID
		upstream.Publish(`{"type":"server.heartbeat","properties":{}}`)
		hb := first.Next()
		if !strings.Contains(hb.Data, "server.heartbeat") || hb.ID == "" || hb.ID == id {
			t.Fatalf("heartbeat %+v, want it live, with the client's position after it as its id", hb)
		}
		upstream.Publish(`{"type":"n","properties":{"n":2}}`)
		first.Next()
		for _, from := range []string{id, hb.ID} {
			resumed := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {from}})
			resumed.Next()
			if ev := resumed.Next(); !strings.Contains(ev.Data, `"n":2`) {
				t.Fatalf("replayed from %s: %+v, want n=2 without the heartbeat", from, ev)
			}
			resumed.Close()
		}
	})

	t.Run("a client that saw only the greeting resumes from it and misses nothing", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{}, upstream)
		steady := upstreamtest.Subscribe(t, url+"/event", nil)
		steady.Next()
		idle := upstreamtest.Subscribe(t, url+"/event", nil)
		greeting := idle.Next()
		idle.Close() // dropped before any event
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		upstream.Publish(`{"type":"n","properties":{"n":2}}`)
		want := steady.Until(`"n":2`)
		back := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {greeting.ID}})
		if g := back.Next(); !strings.Contains(g.Data, "server.connected") || g.ID != greeting.ID {
			t.Fatalf("the resumed greeting %+v, want the resume point %s as its id", g, greeting.ID)
		}
		got := back.Until(`"n":2`)
		if upstreamtest.Datas(got) != upstreamtest.Datas(want) {
			t.Fatalf("resumed from the greeting:\n%s\nwant what the client that stayed got:\n%s", upstreamtest.Datas(got), upstreamtest.Datas(want))
		}
	})

	t.Run("the subscription lingers for clients that come back, then ends", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{Linger: caddy.Duration(300 * time.Millisecond)}, upstream)
		client := upstreamtest.Subscribe(t, url+"/event", nil)
		client.Next()
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		id := client.Next().ID
		client.Close()
		time.Sleep(50 * time.Millisecond)
		upstream.Publish(`{"type":"n","properties":{"n":2}}`)
		back := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
		back.Next()
		if ev := back.Next(); !strings.Contains(ev.Data, `"n":2`) {
			t.Fatalf("an event sent while no client was connected: got %+v", ev)
		}
		back.Close()
		upstreamtest.WaitFor(t, "the subscription to end after linger", func() bool { return upstream.Open.Load() == 0 })
		late := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
		late.Next()
		if ev := late.Next(); !strings.Contains(ev.Data, `"reason":"unknown"`) {
			t.Fatalf("a client back after the stream ended: %+v, want a resync", ev)
		}
	})

	t.Run("an upstream stream that breaks off is subscribed again, and clients are told events may be missing", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		_, url := eventsFront(t, Config{}, upstream)
		client := upstreamtest.Subscribe(t, url+"/event", nil)
		client.Next()
		upstream.DropAll()
		upstreamtest.WaitFor(t, "a new subscription", func() bool { return upstream.Opened.Load() == 2 })
		ev := client.Next()
		if !strings.Contains(ev.Data, `"reason":"upstream_reconnected"`) || ev.ID == "" {
			t.Fatalf("after the upstream's stream broke: %+v", ev)
		}
		upstream.Publish(`{"type":"n","properties":{"n":1}}`)
		if ev := client.Next(); !strings.Contains(ev.Data, `"n":1`) {
			t.Fatalf("then %+v", ev)
		}
	})

	t.Run("a client that stops reading is dropped after write_timeout; the others and memory are unaffected", func(t *testing.T) {
		upstream := upstreamtest.NewFakeStream()
		s, url := eventsFront(t, Config{RetainEvents: 100, WriteTimeout: caddy.Duration(200 * time.Millisecond)}, upstream)
		reader := upstreamtest.Subscribe(t, url+"/event", nil)
		reader.Next()
		stalled, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer stalled.Close()
		fmt.Fprintf(stalled, "GET /event HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
		upstreamtest.WaitFor(t, "both clients", func() bool { return s.registry.only().subscribers() == 2 })
		big := strings.Repeat("x", 4096)
		for n := 1; n <= 2000; n++ {
			upstream.Publish(`{"type":"n","properties":{"n":%d,"pad":%q}}`, n, big)
			if n%100 == 0 {
				reader.Until(fmt.Sprintf(`"n":%d,`, n))
			}
		}
		upstreamtest.WaitFor(t, "the stalled client to be dropped", func() bool { return s.registry.only().subscribers() == 1 })
		if events, _ := s.registry.only().log.Size(); events > 100 {
			t.Fatalf("the log holds %d events, over its limit of 100", events)
		}
	})
}

// only returns the registry's one hub.
func (g *registry) only() *eventHub {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, hub := range g.hubs {
		return hub
	}
	return nil
}

// twoWorkerFleet serves resumable streams in front of two workers, each
// an upstream stream of its own, behind lb_policy session_ids.
func twoWorkerFleet(t *testing.T, w1, w2 *upstreamtest.FakeStream) (*Streams, string) {
	t.Helper()
	dials := []string{"w1:1", "w2:2"}
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){
		"w1:1": func(w http.ResponseWriter, r *http.Request) { _ = w1.ServeHTTP(w, r) },
		"w2:2": func(w http.ResponseWriter, r *http.Request) { _ = w2.ServeHTTP(w, r) },
	}, dials...)
	return eventsFront(t, Config{}, next, dials...)
}

func TestTheFleetsMergedStreamIsResumable(t *testing.T) {
	w1, w2 := upstreamtest.NewFakeStream(), upstreamtest.NewFakeStream()
	_, url := twoWorkerFleet(t, w1, w2)
	client := upstreamtest.Subscribe(t, url+"/event", nil)
	client.Next()
	upstreamtest.WaitFor(t, "both workers subscribed", func() bool { return w1.Open.Load() == 1 && w2.Open.Load() == 1 })
	w1.Publish(`{"type":"n","properties":{"from":"w1"}}`)
	id := client.Next().ID
	w2.Publish(`{"type":"n","properties":{"from":"w2"}}`)
	got := client.Until(`"from":"w2"`)
	w1.Publish(`{"type":"n","properties":{"from":"w1","n":2}}`)
	got = append(got, client.Until(`"n":2`)...)
	if strings.Count(upstreamtest.Datas(got), "server.connected") != 0 || len(got) != 2 {
		t.Fatalf("the merged stream greets once: %s", upstreamtest.Datas(got))
	}
	resumed := upstreamtest.Subscribe(t, url+"/event", http.Header{"Last-Event-Id": {id}})
	if ev := resumed.Next(); !strings.Contains(ev.Data, "server.connected") {
		t.Fatalf("greeting %+v", ev)
	}
	if replay := resumed.Until(`"n":2`); upstreamtest.Datas(replay) != upstreamtest.Datas(got) {
		t.Fatalf("replayed\n%s\nwant\n%s", upstreamtest.Datas(replay), upstreamtest.Datas(got))
	}
}

func TestAFleetStreamThatNoWorkerGrantsIsRefusedAsTheyRefuseIt(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	w1, w2 := upstreamtest.NewFakeStream(), upstreamtest.NewFakeStream()
	w1.Password, w2.Password = "Basic right", "Basic right"
	_, url := twoWorkerFleet(t, w1, w2)
	if wrong := upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic wrong"}}); wrong.Resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong credentials on every worker: %d, want their 401", wrong.Resp.StatusCode)
	}
	right := upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic right"}})
	right.Next()

	down := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){}, dials...) // every worker answers 503
	_, url2 := eventsFront(t, Config{}, down, dials...)
	if resp := upstreamtest.Subscribe(t, url2+"/event", nil); resp.Resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("no worker available: %d, want 503", resp.Resp.StatusCode)
	}
}
