package events

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// seenUpstream is an upstream event stream that also records the query of
// every subscription it was asked for: what the upstream received.
type seenUpstream struct {
	*upstreamtest.FakeStream
	mu      sync.Mutex
	queries []string
}

func newSeenUpstream() *seenUpstream {
	return &seenUpstream{FakeStream: upstreamtest.NewFakeStream()}
}

func (u *seenUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.mu.Lock()
	u.queries = append(u.queries, r.URL.RawQuery)
	u.mu.Unlock()
	return u.FakeStream.ServeHTTP(w, r)
}

func (u *seenUpstream) Queries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.queries)
}

// count is how many hubs the registry holds.
func (g *registry) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.hubs)
}

// wantTooMany checks a refusal: 429, Retry-After, opencode's error shape.
func wantTooMany(t *testing.T, s *upstreamtest.Subscriber, what string) {
	t.Helper()
	if s.Resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("%s: %d, want 429", what, s.Resp.StatusCode)
	}
	if s.Resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s: 429 without Retry-After", what)
	}
	body, _ := io.ReadAll(s.Resp.Body)
	var e struct {
		Name string `json:"name"`
		Data struct {
			Message string `json:"message"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Name != "TooManyStreamsError" || e.Data.Message == "" {
		t.Fatalf("%s: body %s, want {\"name\":\"TooManyStreamsError\",\"data\":{\"message\":...}}", what, body)
	}
}

func TestAStreamsScopeIsOnlyWhatTheUpstreamHonours(t *testing.T) {
	t.Run("distinct junk query strings share one hub and one upstream subscription, which gets none of them", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		for i := range 20 {
			c := upstreamtest.Subscribe(t, fmt.Sprintf("%s/event?junk%d=%d&cachebust=%d", url, i, i, time.Now().UnixNano()), nil)
			c.Next()
		}
		if n := up.Opened.Load(); n != 1 {
			t.Fatalf("20 clients with junk queries made %d upstream subscriptions, want 1", n)
		}
		if n := s.registry.count(); n != 1 {
			t.Fatalf("%d hubs, want 1", n)
		}
		if q := up.Queries(); len(q) != 1 || q[0] != "" {
			t.Fatalf("the upstream was asked with queries %q, want one without any", q)
		}
	})

	t.Run("directory and workspace are the scope on /event, and reach the subscription", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		for _, query := range []string{"directory=/a&junk=1", "junk=2&directory=/a", "directory=/a&workspace=w&x=1", "workspace=w&directory=/a"} {
			upstreamtest.Subscribe(t, url+"/event?"+query, nil).Next()
		}
		if n := s.registry.count(); n != 2 {
			t.Fatalf("%d hubs, want 2: directory /a, and /a with workspace w", n)
		}
		got := up.Queries()
		slices.Sort(got)
		if want := []string{"directory=%2Fa", "directory=%2Fa&workspace=w"}; !slices.Equal(got, want) {
			t.Fatalf("the upstream was asked with %q, want %q", got, want)
		}
	})

	t.Run("/global/event declares no parameter: every query is one stream", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		for _, query := range []string{"", "directory=/a", "junk=1"} {
			upstreamtest.Subscribe(t, url+"/global/event?"+query, nil).Next()
		}
		if n := s.registry.count(); n != 1 || up.Opened.Load() != 1 {
			t.Fatalf("%d hubs, %d subscriptions, want 1 and 1", n, up.Opened.Load())
		}
	})

	t.Run("the directory headers are the scope too", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		upstreamtest.Subscribe(t, url+"/event", http.Header{"X-Opencode-Directory": {"/a"}}).Next()
		upstreamtest.Subscribe(t, url+"/event", http.Header{"X-Opencode-Directory": {"/b"}}).Next()
		upstreamtest.Subscribe(t, url+"/event", http.Header{"X-Opencode-Directory": {"/a"}, "X-Junk": {"1"}}).Next()
		if n := s.registry.count(); n != 2 {
			t.Fatalf("%d hubs, want 2", n)
		}
	})

	t.Run("auth_token is the caller, not the scope: one caller's header and token share a hub, whose subscription carries the token", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		token := "b3BlbmNvZGU6c2VjcmV0" // opencode:secret
		upstreamtest.Subscribe(t, url+"/event?auth_token="+token+"&junk=1", http.Header{testCaller: {"c1"}}).Next()
		upstreamtest.Subscribe(t, url+"/event?auth_token="+token+"&junk=2", http.Header{testCaller: {"c1"}}).Next()
		upstreamtest.Subscribe(t, url+"/event", http.Header{testCaller: {"c1"}, "Authorization": {"Basic " + token}}).Next()
		if n := s.registry.count(); n != 1 || up.Opened.Load() != 1 {
			t.Fatalf("one caller three ways: %d hubs, %d subscriptions; want 1 and 1", n, up.Opened.Load())
		}
		if q := up.Queries(); len(q) != 1 || q[0] != "auth_token="+token {
			t.Fatalf("the subscription was asked with %q, want the token and nothing else", q)
		}
		upstreamtest.Subscribe(t, url+"/event?auth_token=b3BlbmNvZGU6b3RoZXI=", http.Header{testCaller: {"c2"}}).Next()
		if n := s.registry.count(); n != 2 {
			t.Fatalf("another caller: %d hubs, want 2", n)
		}
	})

	t.Run("without the gate, credentials in a header or in auth_token still keep callers apart", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{}, up)
		upstreamtest.Subscribe(t, url+"/event?auth_token=dG9rZW4=", nil).Next()
		upstreamtest.Subscribe(t, url+"/event", nil).Next()
		upstreamtest.Subscribe(t, url+"/event?auth_token=b3RoZXI=", nil).Next()
		upstreamtest.Subscribe(t, url+"/event", http.Header{"Authorization": {"Basic x"}}).Next()
		upstreamtest.Subscribe(t, url+"/event?auth_token=dG9rZW4=&junk=1", nil).Next()
		if n := s.registry.count(); n != 4 {
			t.Fatalf("%d hubs, want 4: each set of credentials its own, junk none", n)
		}
	})
}

func TestStreamsAreBounded(t *testing.T) {
	t.Run("over max_clients the next stream is answered 429 in opencode's shape, and admitted once a client left", func(t *testing.T) {
		up := newSeenUpstream()
		_, url := eventsFront(t, Config{MaxClients: 2}, up)
		a := upstreamtest.Subscribe(t, url+"/event", nil)
		a.Next()
		upstreamtest.Subscribe(t, url+"/event?directory=/b", nil).Next()
		wantTooMany(t, upstreamtest.Subscribe(t, url+"/event", nil), "the third client")
		a.Close()
		upstreamtest.WaitFor(t, "a's place to be given back", func() bool {
			c := upstreamtest.Subscribe(t, url+"/event", nil)
			defer c.Close()
			return c.Resp.StatusCode == http.StatusOK
		})
	})

	t.Run("over max_streams with every stream in use, a new scope is answered 429; clients of a stream that exists are not", func(t *testing.T) {
		up := newSeenUpstream()
		_, url := eventsFront(t, Config{MaxStreams: 2}, up)
		upstreamtest.Subscribe(t, url+"/event?directory=/a", nil).Next()
		upstreamtest.Subscribe(t, url+"/event?directory=/b", nil).Next()
		wantTooMany(t, upstreamtest.Subscribe(t, url+"/event?directory=/c", nil), "a third scope")
		upstreamtest.Subscribe(t, url+"/event?directory=/a&junk=1", nil).Next()
		if n := up.Opened.Load(); n != 2 {
			t.Fatalf("%d upstream subscriptions, want 2", n)
		}
	})

	t.Run("at max_streams a new scope ends the stream that has been without clients longest", func(t *testing.T) {
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{MaxStreams: 2, Linger: caddy.Duration(time.Hour)}, up)
		a := upstreamtest.Subscribe(t, url+"/event?directory=/a", nil)
		a.Next()
		up.Publish(`{"type":"n","properties":{"n":1}}`)
		aID := a.Next().ID
		b := upstreamtest.Subscribe(t, url+"/event?directory=/b", nil)
		b.Next()
		a.Close()
		upstreamtest.WaitFor(t, "a to be without clients", func() bool { return hubOf(s, "/a").subscribers() == 0 })
		time.Sleep(10 * time.Millisecond)
		b.Close()
		upstreamtest.WaitFor(t, "b to be without clients", func() bool { return hubOf(s, "/b").subscribers() == 0 })

		upstreamtest.Subscribe(t, url+"/event?directory=/c", nil).Next()
		if hubOf(s, "/a") != nil || hubOf(s, "/b") == nil || s.registry.count() != 2 {
			t.Fatal("the new scope did not take the place of the one idle longest (a), keeping b")
		}
		upstreamtest.WaitFor(t, "a's subscription to end", func() bool { return up.Open.Load() == 2 })
		resumed := upstreamtest.Subscribe(t, url+"/event?directory=/a", http.Header{"Last-Event-Id": {aID}})
		resumed.Next() // greeting
		if ev := resumed.Next(); !strings.Contains(ev.Data, `"reason":"unknown"`) {
			t.Fatalf("a client of the ended stream coming back: %s, want an unknown resync", ev.Data)
		}
		if hubOf(s, "/b") != nil {
			t.Fatal("a's new stream did not take the place of b, now the one idle longest")
		}
	})

	t.Run("max_clients_per_ip holds one address back and leaves the others served", func(t *testing.T) {
		up := newSeenUpstream()
		_, url := eventsFront(t, Config{MaxClientsPerIP: 2}, up)
		from := func(ip string) http.Header { return http.Header{testClientIP: {ip}} }
		upstreamtest.Subscribe(t, url+"/event", from("203.0.113.7")).Next()
		upstreamtest.Subscribe(t, url+"/event?junk=1", from("203.0.113.7")).Next()
		wantTooMany(t, upstreamtest.Subscribe(t, url+"/event", from("203.0.113.7")), "the greedy address's third")
		for _, ip := range []string{"203.0.113.8", "2001:db8::1"} {
			if c := upstreamtest.Subscribe(t, url+"/event", from(ip)); c.Resp.StatusCode != http.StatusOK {
				t.Fatalf("another address %s: %d, want 200", ip, c.Resp.StatusCode)
			}
		}
		upstreamtest.Subscribe(t, url+"/event", from("2001:db8::2")).Next()
		wantTooMany(t, upstreamtest.Subscribe(t, url+"/event", from("2001:db8::ffff")), "a third address of one IPv6 /64")
	})

	t.Run("with events off, merged fleet streams hold places too", func(t *testing.T) {
		w1, w2 := upstreamtest.NewFakeStream(), upstreamtest.NewFakeStream()
		dials := []string{"w1:1", "w2:2"}
		next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){
			"w1:1": func(w http.ResponseWriter, r *http.Request) { _ = w1.ServeHTTP(w, r) },
			"w2:2": func(w http.ResponseWriter, r *http.Request) { _ = w2.ServeHTTP(w, r) },
		}, dials...)
		_, url := eventsFront(t, Config{Off: true, MaxClientsPerIP: 1}, next, dials...)
		upstreamtest.Subscribe(t, url+"/event", nil).Next()
		wantTooMany(t, upstreamtest.Subscribe(t, url+"/event", nil), "a second merged stream from one address")
	})

	t.Run("the retained events of all streams stay within retain_total while they append, and a client resuming from before what was given up resyncs", func(t *testing.T) {
		const streams, events = 8, 400
		pad := strings.Repeat("x", 200)
		eventSize := int64(len(fmt.Sprintf(`data: {"type":"n","properties":{"n":%d,"pad":%q}}`+"\n\n", 100, pad))) + 80
		total := streams * 20 * eventSize
		up := newSeenUpstream()
		s, url := eventsFront(t, Config{RetainTotal: total}, up)
		clients := make([]*upstreamtest.Subscriber, streams)
		for i := range clients {
			clients[i] = upstreamtest.Subscribe(t, fmt.Sprintf("%s/event?directory=/d%d", url, i), nil)
			clients[i].Next()
		}
		budget := s.registry.budget
		stop := make(chan struct{})
		var most int64
		var sampled sync.WaitGroup
		sampled.Go(func() {
			for {
				most = max(most, budget.Used())
				select {
				case <-stop:
					return
				default:
				}
			}
		})
		var firstID string
		for n := 100; n < 100+events; n++ {
			up.Publish(`{"type":"n","properties":{"n":%d,"pad":%q}}`, n, pad)
			if n == 100 {
				firstID = clients[0].Next().ID
			}
		}
		for _, c := range clients {
			c.Until(fmt.Sprintf(`"n":%d,`, 100+events-1))
		}
		close(stop)
		sampled.Wait()
		most = max(most, budget.Used()) // the sampler may not have run since the last append
		if most > total {
			t.Fatalf("the streams retained %d bytes together, over retain_total %d", most, total)
		}
		if most < total*9/10 {
			t.Fatalf("the streams retained at most %d bytes of %d: the test proves little", most, total)
		}
		resumed := upstreamtest.Subscribe(t, url+"/event?directory=/d0", http.Header{"Last-Event-Id": {firstID}})
		resumed.Next() // greeting
		if ev := resumed.Next(); !strings.Contains(ev.Data, `"type":"session_ids.resync"`) || !strings.Contains(ev.Data, `"reason":"expired"`) {
			t.Fatalf("resuming from %s after it was given up: %s, want an expired resync", firstID, ev.Data)
		}
	})
}

// hubOf returns the hub whose scope has directory dir, or nil.
func hubOf(s *Streams, dir string) *eventHub {
	s.registry.mu.Lock()
	defer s.registry.mu.Unlock()
	for _, hub := range s.registry.hubs {
		if hub.scope.rawQuery == "directory=%2F"+strings.TrimPrefix(dir, "/") {
			return hub
		}
	}
	return nil
}

var _ caddyhttp.Handler = (*seenUpstream)(nil)
