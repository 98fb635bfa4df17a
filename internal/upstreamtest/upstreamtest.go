// Package upstreamtest holds what the tests of several packages use to
// stand in for reverse_proxy and its workers: a pool, a next that answers
// as each worker of a route would, an upstream event stream the test feeds,
// and a client that reads an event stream. Only tests import it.
package upstreamtest

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Pool is a pool of upstreams with these dial addresses, all available.
func Pool(dials ...string) reverseproxy.UpstreamPool {
	var pool reverseproxy.UpstreamPool
	for _, d := range dials {
		pool = append(pool, &reverseproxy.Upstream{Dial: d, Host: new(reverseproxy.Host)})
	}
	return pool
}

// ByWorker answers each request with what the worker of its route says, as
// reverse_proxy with lb_policy session_ids over Pool(dials) would: it
// reports the pool on the route, and a worker without an answer is
// unavailable (503). GET /global/health without a worker (the gate's
// verification, which the fallback places) is served: no password.
func ByWorker(answers map[string]func(w http.ResponseWriter, r *http.Request), dials ...string) caddyhttp.Handler {
	pool := upstream.NewPool(Pool(dials...))
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		rt := upstream.RouteOf(r)
		rt.Report(pool, nil)
		if r.Method == http.MethodGet && r.URL.Path == "/global/health" && rt.Worker == "" {
			// The policy's fallback picks a worker; every one is healthy and,
			// like opencode without a password, serves everyone.
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"healthy":true}`))
			return nil
		}
		answer, ok := answers[rt.Worker]
		if !ok {
			return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("no upstreams available"))
		}
		answer(w, r)
		return nil
	})
}

// FakeStream is an upstream's event stream that the test feeds: every
// subscription gets the greeting, then every event published while it is
// subscribed. It counts the subscriptions open and refuses requests
// without the password, as opencode with OPENCODE_SERVER_PASSWORD does.
type FakeStream struct {
	// Password, when set, is the Authorization every subscription must carry.
	Password string

	mu     sync.Mutex
	subs   map[chan string]bool
	Opened atomic.Int64 // subscriptions ever granted
	Open   atomic.Int64 // subscriptions open now
}

// NewFakeStream returns a stream without subscriptions.
func NewFakeStream() *FakeStream { return &FakeStream{subs: map[chan string]bool{}} }

// Publish sends one event to every open subscription.
func (f *FakeStream) Publish(format string, args ...any) {
	ev := "data: " + fmt.Sprintf(format, args...) + "\n\n"
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		sub <- ev
	}
}

// DropAll ends every open subscription, as a restarting upstream does.
func (f *FakeStream) DropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		close(sub)
		delete(f.subs, sub)
	}
}

// ServeHTTP serves a subscription, as next (reverse_proxy) would.
func (f *FakeStream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if r.URL.Path != "/event" && r.URL.Path != "/global/event" {
		return nil // the handler's own HEAD /global/health, say
	}
	if f.Password != "" && r.Header.Get("Authorization") != f.Password {
		w.Header().Set("WWW-Authenticate", `Basic realm="Secure Area"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("Unauthorized"))
		return nil
	}
	sub := make(chan string, 100000)
	f.mu.Lock()
	f.subs[sub] = true
	f.mu.Unlock()
	f.Opened.Add(1)
	f.Open.Add(1)
	defer f.Open.Add(-1)
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

// SSE is an event as a client reads it.
type SSE struct{ ID, Data string }

// Subscriber reads one event stream.
type Subscriber struct {
	t      *testing.T
	Resp   *http.Response
	cancel context.CancelFunc
	events chan SSE
}

// Subscribe opens an event stream; the test ends it.
func Subscribe(t *testing.T, url string, header http.Header) *Subscriber {
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
	s := &Subscriber{t: t, Resp: resp, cancel: cancel, events: make(chan SSE, 100000)}
	t.Cleanup(s.Close)
	if resp.StatusCode != http.StatusOK {
		return s
	}
	go func() {
		defer close(s.events)
		reader := bufio.NewReader(resp.Body)
		var ev SSE
		for {
			line, err := reader.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				s.events <- ev
				ev = SSE{}
			case strings.HasPrefix(line, "id: "):
				ev.ID = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				ev.Data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return s
}

// Close ends the stream.
func (s *Subscriber) Close() { s.cancel(); s.Resp.Body.Close() }

// Next returns the next event, failing after a few seconds.
func (s *Subscriber) Next() SSE {
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
	return SSE{}
}

// Until returns the events up to and including the first whose data
// contains marker.
func (s *Subscriber) Until(marker string) []SSE {
	s.t.Helper()
	var got []SSE
	for {
		ev := s.Next()
		got = append(got, ev)
		if strings.Contains(ev.Data, marker) {
			return got
		}
	}
}

// Datas is the data of events, a line each.
func Datas(evs []SSE) string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Data)
	}
	return strings.Join(out, "\n")
}

// WaitFor waits up to 5s for cond.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
