package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// response is what a test needs of an HTTP answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(tb testing.TB, v any) {
	tb.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		tb.Fatalf("answer is not JSON (%v): %s", err, r.Body)
	}
}

// call sends a request with an optional JSON body. password, if set, is sent
// as opencode's basic auth.
func call(tb testing.TB, method, url string, body any, password string) response {
	tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if password != "" {
		req.SetBasicAuth("opencode", password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read: %v", method, url, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

type session struct {
	ID       string         `json:"id"`
	ParentID string         `json:"parentID"`
	Title    string         `json:"title"`
	Metadata map[string]any `json:"metadata"`
}

// upstreamSessionsOf lists, on the upstream directly, the sessions made for a
// client id (tagged with it in their metadata).
func upstreamSessionsOf(tb testing.TB, oc *opencode, clientID string) []session {
	tb.Helper()
	r := call(tb, "GET", oc.URL+"/session", nil, oc.Password)
	if r.Status != 200 {
		tb.Fatalf("list upstream sessions: %d %s", r.Status, r.Body)
	}
	var all, mine []session
	r.json(tb, &all)
	for _, s := range all {
		if s.Metadata["clientSessionID"] == clientID {
			mine = append(mine, s)
		}
	}
	return mine
}

// realID is the upstream's id of the one session made for a client id.
func realID(tb testing.TB, oc *opencode, clientID string) string {
	tb.Helper()
	sessions := upstreamSessionsOf(tb, oc, clientID)
	if len(sessions) != 1 {
		tb.Fatalf("upstream has %d sessions for %s, want 1", len(sessions), clientID)
	}
	return sessions[0].ID
}

func upstreamSessionCount(tb testing.TB, oc *opencode) int {
	tb.Helper()
	var all []session
	call(tb, "GET", oc.URL+"/session", nil, oc.Password).json(tb, &all)
	return len(all)
}

// eventStream reads server-sent events from a URL until the test ends.
type eventStream struct {
	events chan string
	cancel context.CancelFunc
}

func subscribe(tb testing.TB, url, password string) *eventStream {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if password != "" {
		req.SetBasicAuth("opencode", password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatalf("subscribe %s: %v", url, err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		cancel()
		tb.Fatalf("subscribe %s: %d %s %s", url, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	s := &eventStream{events: make(chan string, 10000), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				s.events <- data
			}
		}
	}()
	tb.Cleanup(cancel)
	return s
}

// until collects events until one satisfies done, or fails after timeout.
func (s *eventStream) until(tb testing.TB, timeout time.Duration, done func(event string) bool) []string {
	tb.Helper()
	var seen []string
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				tb.Fatalf("event stream ended after %d events", len(seen))
			}
			seen = append(seen, e)
			if done(e) {
				return seen
			}
		case <-deadline:
			tb.Fatalf("no awaited event within %v; saw %d events:\n%s", timeout, len(seen), strings.Join(seen, "\n"))
		}
	}
}

// eventually retries check until it returns true, or fails after timeout.
func eventually(tb testing.TB, timeout time.Duration, what string, check func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !check() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}
