package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// maxClientsPerIP is the events max_clients_per_ip of limitsCaddyfile: room
// for the 50 junk streams and a few more, all from 127.0.0.1.
const maxClientsPerIP = 53

// limitsCaddyfile is session_ids with the event stream limits set low
// enough for a test to reach them.
var limitsCaddyfile = fmt.Sprintf(`{
	admin {$ADMIN}
}
http://{$LISTEN} {
	bind 127.0.0.1
	session_ids {
		events {
			max_clients_per_ip %d
		}
	}
	reverse_proxy {$UPSTREAM} {
		flush_interval -1
	}
}
`, maxClientsPerIP)

// metric returns the value of one series on a Caddy's admin /metrics, 0
// when it is absent.
func metric(tb testing.TB, c *caddy, series string) float64 {
	tb.Helper()
	r := call(tb, "GET", "http://"+c.admin()+"/metrics", nil, "")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`).FindSubmatch(r.Body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		tb.Fatalf("%s: %v", series, err)
	}
	return v
}

// TestEventStreamLimits is the "Limits" section of docs/events.md against
// stock opencode behind the built Caddy: what a client may vary freely
// makes no stream of its own, and one address cannot hold more client
// streams than max_clients_per_ip.
func TestEventStreamLimits(t *testing.T) {
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(limitsCaddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddyWith(t, caddyBin, config, oc.URL)
	oc.waitHealthy(t)

	// The clients stay for both subtests: they are the parent's.
	var clients []*resumable
	for i := range 50 {
		c := openEvents(t, fmt.Sprintf("%s/event?junk%d=%d&cachebust=%d", proxy.URL, i, i, time.Now().UnixNano()), "")
		if c.status != http.StatusOK {
			t.Fatalf("client %d: %d", i, c.status)
		}
		c.next(t) // server.connected
		clients = append(clients, c)
	}

	t.Run("50 clients of /event with distinct junk query strings are one upstream subscription, and each gets the prompt's events", func(t *testing.T) {
		for series, want := range map[string]float64{
			`caddy_session_ids_event_streams{namespace="default"}`:       1,
			`caddy_session_ids_event_subscriptions{namespace="default"}`: 1,
			`caddy_session_ids_event_clients{namespace="default"}`:       50,
		} {
			if got := metric(t, proxy, series); got != want {
				t.Errorf("%s = %v, want %v", series, got, want)
			}
		}
		if n := upstreamRequests(t, proxy); n != 1 {
			t.Errorf("Caddy has %d requests open to opencode with 50 junk-query clients, want 1", n)
		}

		id := fmt.Sprintf("ses_limits_%d", time.Now().UnixNano())
		createSession(t, proxy.URL, id)
		promptAsync(t, proxy.URL, id, "hello")
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() { c.until(t, 20*time.Second, idleOf(id)) })
		}
		wg.Wait()
	})

	t.Run("over max_clients_per_ip the next stream is answered 429 in opencode's shape with Retry-After, and admitted once one left", func(t *testing.T) {
		for len(clients) < maxClientsPerIP {
			c := openEvents(t, proxy.URL+"/global/event", "")
			if c.status != http.StatusOK {
				t.Fatalf("client %d of %d allowed: %d", len(clients)+1, maxClientsPerIP, c.status)
			}
			c.next(t)
			clients = append(clients, c)
		}
		quick := &http.Client{Timeout: 10 * time.Second} // a stream admitted by mistake fails the test, not hangs it
		resp, err := quick.Get(proxy.URL + "/event?one=more")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct {
			Name string `json:"name"`
			Data struct {
				Message string `json:"message"`
			} `json:"data"`
		}
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" ||
			json.Unmarshal(body, &e) != nil || e.Name != "TooManyStreamsError" || e.Data.Message == "" {
			t.Fatalf("client %d from one address: %d Retry-After=%q %s; want 429, Retry-After, a TooManyStreamsError",
				maxClientsPerIP+1, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if got := metric(t, proxy, `caddy_session_ids_event_refusals_total{namespace="default",reason="max_clients_per_ip"}`); got != 1 {
			t.Errorf("refusals by max_clients_per_ip: %v, want 1", got)
		}
		clients[0].cancel()
		eventually(t, 5*time.Second, "a place to be free again", func() bool {
			c := openEvents(t, proxy.URL+"/event", "")
			defer c.cancel()
			return c.status == http.StatusOK
		})
	})
}
