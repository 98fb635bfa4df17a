package lbpolicy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// firstPolicy is a session_ids policy whose fallback takes the first
// available upstream, so that tests know what it picks.
func firstPolicy() *SessionSelection {
	return &SessionSelection{fallback: reverseproxy.FirstSelection{}, pool: new(atomic.Pointer[upstream.Pool])}
}

// routedRequest is a request as the handler leaves it for reverse_proxy.
func routedRequest(worker string) (*upstream.Route, *httptest.ResponseRecorder, *http.Request) {
	r := httptest.NewRequest("GET", "/session/ses_x", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	rt := upstream.Attach(r, nil)
	rt.Worker = worker
	return rt, httptest.NewRecorder(), r
}

func TestThePolicySendsASessionsRequestToItsWorkerOnly(t *testing.T) {
	pool := upstreamtest.Pool("w1:1", "w2:2", "w3:3")
	rt, w, r := routedRequest("w3:3")
	if got := firstPolicy().Select(pool, r, w); got != pool[2] {
		t.Fatalf("selected %v, want w3:3", got)
	}
	if seen, chosen := rt.Outcome(); !seen || chosen != "w3:3" {
		t.Fatalf("reported seen=%v chosen=%q", seen, chosen)
	}
}

func TestThePolicySelectsNothingForAWorkerOutsideThePool(t *testing.T) {
	// reverse_proxy then retries until lb_try_duration and fails with 503:
	// the request never reaches a worker that does not hold its session.
	pool := upstreamtest.Pool("w1:1", "w2:2")
	rt, w, r := routedRequest("gone:9")
	if got := firstPolicy().Select(pool, r, w); got != nil {
		t.Fatalf("selected %v for a worker not in the pool", got.Dial)
	}
	if seen, _ := rt.Outcome(); !seen {
		t.Fatal("the policy did not report the pool it saw")
	}
}

func TestWithoutAWorkerTheFallbackChoosesAndTheChoiceIsReported(t *testing.T) {
	pool := upstreamtest.Pool("w1:1", "w2:2")
	rt, w, r := routedRequest("")
	if got := firstPolicy().Select(pool, r, w); got != pool[0] {
		t.Fatalf("selected %v, want the fallback's w1:1", got)
	}
	if _, chosen := rt.Outcome(); chosen != "w1:1" {
		t.Fatalf("reported %q, want w1:1 (recorded as the new session's worker)", chosen)
	}
}

func TestARequestThatDidNotPassTheHandlerIsTheFallbacks(t *testing.T) {
	pool := upstreamtest.Pool("w1:1", "w2:2")
	r := httptest.NewRequest("GET", "/x", nil)
	if got := firstPolicy().Select(pool, r, httptest.NewRecorder()); got != pool[0] {
		t.Fatalf("selected %v, want the fallback's w1:1", got)
	}
}

func TestThePolicyFindsItsWorkerInANewPool(t *testing.T) {
	// A reload or a dynamic upstream source gives a new pool: the index of
	// dial addresses follows it.
	p := firstPolicy()
	_, w, r := routedRequest("w2:2")
	first := upstreamtest.Pool("w1:1", "w2:2")
	if got := p.Select(first, r, w); got != first[1] {
		t.Fatal("first pool: wrong worker")
	}
	second := upstreamtest.Pool("w2:2", "w4:4")
	if got := p.Select(second, r, w); got != second[0] {
		t.Fatal("second pool: the index was not rebuilt")
	}
}

func TestThePolicysCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input, fallback, err string
	}{
		{"bare, random by default", "session_ids", "", ""},
		{"a fallback", "session_ids {\n fallback least_conn\n}", "least_conn", ""},
		{"a fallback with its own options", "session_ids {\n fallback query directory\n}", "query", ""},
		{"an argument", "session_ids extra", "", "wrong argument count"},
		{"an unknown option", "session_ids {\n sticky\n}", "", "unrecognized lb_policy session_ids option 'sticky'"},
		{"itself as the fallback", "session_ids {\n fallback session_ids\n}", "", "cannot be its own fallback"},
		{"two fallbacks", "session_ids {\n fallback random\n fallback first\n}", "", "already specified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s SessionSelection
			err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var fallback struct{ Policy string }
			if s.FallbackRaw != nil {
				_ = json.Unmarshal(s.FallbackRaw, &fallback)
			}
			if fallback.Policy != tc.fallback {
				t.Fatalf("fallback %q, want %q", fallback.Policy, tc.fallback)
			}
		})
	}
}

func TestThePolicyReportsOneIndexOfItsPoolOnEveryRoute(t *testing.T) {
	// The handler keeps the pool the policy reports and finds workers in
	// it: one index per pool, not one per request.
	p := firstPolicy()
	pool := upstreamtest.Pool("w1:1", "w2:2")
	first, w, r := routedRequest("")
	p.Select(pool, r, w)
	second, w, r := routedRequest("w2:2")
	p.Select(pool, r, w)
	if first.Pool() == nil || first.Pool() != second.Pool() {
		t.Fatalf("reported %p and %p for one pool", first.Pool(), second.Pool())
	}
	if u, ok := first.Pool().Member("w2:2"); !ok || u != pool[1] || first.Pool().Len() != 2 {
		t.Fatalf("the reported pool does not index the workers: %v %v", u, ok)
	}
}
