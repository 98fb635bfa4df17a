package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// fleetHandler is a handler that knows a pool of workers, in front of next
// (which answers as each worker would, by the route's worker).
func fleetHandler(t testing.TB, dials ...string) *Handler {
	// The pool is learned from the policy's report, as in Caddy.
	t.Helper()
	index, err := idmap.NewIndex(idmap.NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test"), idmap.IndexConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	h := &Handler{Mode: ModeDirect, MaxBodySize: 1 << 20, MaxBufferSize: 1 << 20, Events: &events.Config{Off: true}}
	setUp(t, h, index)
	return h
}

func serveFleet(h *Handler, next caddyhttp.Handler, method, target string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		w.Code = 599
	}
	return w
}

func sessionsJSON(updated ...int) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		var list []map[string]any
		for _, u := range updated {
			list = append(list, map[string]any{"id": fmt.Sprintf("ses_%d", u), "time": map[string]any{"updated": u}})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list)
	}
}

func listedIDs(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var list []struct{ ID string }
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var ids []string
	for _, s := range list {
		ids = append(ids, strings.TrimPrefix(s.ID, "ses_"))
	}
	return strings.Join(ids, " ")
}

func TestTheSessionListIsEveryWorkersNewestFirstCutToTheLimit(t *testing.T) {
	dials := []string{"w1:1", "w2:2", "w3:3"}
	h := fleetHandler(t, dials...)
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){
		"w1:1": sessionsJSON(90, 40, 10), "w2:2": sessionsJSON(80, 70), "w3:3": sessionsJSON(50),
	}, dials...)
	if got := listedIDs(t, serveFleet(h, next, "GET", "/session")); got != "90 80 70 50 40 10" {
		t.Fatalf("merged list %q", got)
	}
	if got := listedIDs(t, serveFleet(h, next, "GET", "/session?limit=3")); got != "90 80 70" {
		t.Fatalf("merged list with limit 3: %q", got)
	}
}

func TestAFleetReadNamesTheWorkersItIsMissing(t *testing.T) {
	dials := []string{"w1:1", "down:2"}
	h := fleetHandler(t, dials...)
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": sessionsJSON(5)}, dials...)
	w := serveFleet(h, next, "GET", "/session")
	if w.Code != 200 || listedIDs(t, w) != "5" || w.Header().Get(fleet.MissingWorkersHeader) != "down:2" {
		t.Fatalf("%d %q, missing %q", w.Code, w.Body, w.Header().Get(fleet.MissingWorkersHeader))
	}
}

func TestAWorkersClientErrorIsTheFleetsAnswer(t *testing.T) {
	// A bad query is bad on every worker: answer as one opencode would.
	dials := []string{"w1:1", "w2:2"}
	h := fleetHandler(t, dials...)
	bad := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"name":"BadRequest"}`))
	}
	w := serveFleet(h, upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": bad, "w2:2": bad}, dials...), "GET", "/session?limit=x")
	if w.Code != 400 || !strings.Contains(w.Body.String(), "BadRequest") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestSessionStatusIsMergedAcrossWorkers(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	h := fleetHandler(t, dials...)
	status := func(body string) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		}
	}
	w := serveFleet(h, upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){
		"w1:1": status(`{"ses_a":{"type":"busy"}}`), "w2:2": status(`{"ses_b":{"type":"idle"}}`),
	}, dials...), "GET", "/session/status")
	var merged map[string]map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &merged); err != nil || merged["ses_a"]["type"] != "busy" || merged["ses_b"]["type"] != "idle" {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestARequestForASessionGoesToItsRecordedWorkerAndNamesItWhenDown(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	h := fleetHandler(t, dials...)
	if err := h.index.Save(context.Background(), idmap.Mapping{ClientID: "ses_on2", RealID: "ses_on2", Worker: "w2:2"}); err != nil {
		t.Fatal(err)
	}
	if err := h.index.Save(context.Background(), idmap.Mapping{ClientID: "ses_gone", RealID: "ses_gone", Worker: "w9:9"}); err != nil {
		t.Fatal(err)
	}
	hello := func(worker string) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(worker)) }
	}
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": hello("w1"), "w2:2": hello("w2")}, dials...)
	if w := serveFleet(h, next, "GET", "/session/ses_on2"); w.Body.String() != "w2" {
		t.Fatalf("answered by %q, want w2", w.Body)
	}
	w := serveFleet(h, next, "GET", "/session/ses_gone")
	if w.Code != 503 || !strings.Contains(w.Body.String(), "w9:9") || !strings.Contains(w.Body.String(), "not among reverse_proxy's upstreams") {
		t.Fatalf("a session on a worker outside the pool: %d %s", w.Code, w.Body)
	}
	// Down (the policy selects nothing, reverse_proxy gives up with 503).
	down := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": hello("w1")}, dials...)
	w = serveFleet(h, down, "GET", "/session/ses_on2")
	if w.Code != 503 || !strings.Contains(w.Body.String(), `"name":"UpstreamError"`) || !strings.Contains(w.Body.String(), "w2:2") {
		t.Fatalf("a session whose worker is down: %d %s", w.Code, w.Body)
	}
}

func TestASessionWithoutARecordedWorkerIsFoundOnceAndRemembered(t *testing.T) {
	dials := []string{"w1:1", "w2:2", "w3:3"}
	h := fleetHandler(t, dials...)
	var mu sync.Mutex
	asked := map[string]int{}
	has := func(yes bool, worker string) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			asked[worker]++
			mu.Unlock()
			if !yes {
				w.WriteHeader(404)
				return
			}
			_, _ = w.Write([]byte(worker))
		}
	}
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": has(false, "w1"), "w2:2": has(false, "w2"), "w3:3": has(true, "w3")}, dials...)
	for range 3 {
		if w := serveFleet(h, next, "GET", "/session/ses_madeelsewhere"); w.Body.String() != "w3" {
			t.Fatalf("answered %d %q, want w3", w.Code, w.Body)
		}
	}
	if asked["w1"] != 1 || asked["w2"] != 1 {
		t.Fatalf("workers asked %v: the first request asks each once, later ones go straight to w3", asked)
	}
	if worker, known, _ := h.index.WorkerOf(context.Background(), "ses_madeelsewhere"); !known || worker != "w3:3" {
		t.Fatalf("recorded %q %v", worker, known)
	}
}

func TestTheMergedStreamGreetsOnceAndCarriesEveryWorkersEvents(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	h := fleetHandler(t, dials...)
	stream := func(name string) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"type\":\"server.connected\",\"properties\":{}}\n\n")
			fmt.Fprintf(w, "data: {\"type\":\"session.idle\",\"properties\":{\"from\":%q}}\n\n", name)
			<-r.Context().Done()
		}
	}
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": stream("w1"), "w2:2": stream("w2")}, dials...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := httptest.NewRequest("GET", "/event", nil)
	r = r.WithContext(context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{}))
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, next)
	body := w.Body.String()
	if strings.Count(body, "server.connected") != 1 || !strings.Contains(body, `"from":"w1"`) || !strings.Contains(body, `"from":"w2"`) {
		t.Fatalf("merged stream:\n%s", body)
	}
}

func TestASessionTwoWorkersListIsListedOnceFromItsRecordedWorker(t *testing.T) {
	dials := []string{"w1:1", "w2:2"}
	h := fleetHandler(t, dials...)
	stale := func(updated int) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode([]map[string]any{
				{"id": "ses_both", "title": fmt.Sprintf("on %d", updated), "time": map[string]any{"updated": updated}},
				{"id": fmt.Sprintf("ses_only%d", updated), "time": map[string]any{"updated": updated}},
			})
		}
	}
	// w1 came back with an older copy; the session lives on w2.
	next := upstreamtest.ByWorker(map[string]func(http.ResponseWriter, *http.Request){"w1:1": stale(5), "w2:2": stale(9)}, dials...)
	if err := h.index.SaveWorker(context.Background(), "ses_both", "w2:2"); err != nil {
		t.Fatal(err)
	}
	w := serveFleet(h, next, "GET", "/session")
	var list []struct{ ID, Title string }
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.ID+"="+s.Title)
	}
	if strings.Join(got, " ") != "ses_only9= ses_both=on 9 ses_only5=" {
		t.Fatalf("merged list %v", got)
	}
	// Recorded on w1 (moved back), the copy of w1 is the one listed.
	if err := h.index.SaveWorker(context.Background(), "ses_both", "w1:1"); err != nil {
		t.Fatal(err)
	}
	if body := serveFleet(h, next, "GET", "/session").Body.String(); strings.Count(body, `"ses_both"`) != 1 || !strings.Contains(body, `"on 5"`) {
		t.Fatalf("merged list %s", body)
	}
}
