package caddymodule

import (
	"net/http"
	"strings"
	"sync"
	"testing"
)

// lockedUpstream is opencode with a password: it refuses every request
// without it, and records what reached it.
type lockedUpstream struct {
	mu   sync.Mutex
	seen []string
}

const goodAuth = "Basic b3BlbmNvZGU6c2VjcmV0" // opencode:secret

func (u *lockedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.seen = append(u.seen, r.Method+" "+r.URL.Path+" upgrade="+r.Header.Get("Upgrade"))
	u.mu.Unlock()
	if r.Header.Get("Authorization") != goodAuth {
		w.Header().Set("Www-Authenticate", `Basic realm="Secure Area"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{}`))
}

func (u *lockedUpstream) reached() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.seen
	u.seen = nil
	return out
}

func TestARefusedCallerCostsOneVerificationAndReachesNothingElse(t *testing.T) {
	up := &lockedUpstream{}
	_, front := newProxy(t, up)
	for _, probe := range []struct{ method, path, body string }{
		{"POST", "/session", `{"id":"` + clientID + `","title":"guess"}`},
		{"POST", "/session/" + clientID + "/message", `{"parts":[]}`},
		{"GET", "/session/" + clientID, ""},
		{"GET", "/event", ""},
	} {
		resp, body := send(t, probe.method, front.URL+probe.path, "application/json", probe.body)
		if resp.StatusCode != 401 || resp.Header.Get("Www-Authenticate") == "" || len(body) != 0 {
			t.Fatalf("%s %s without credentials: %d %q %q", probe.method, probe.path, resp.StatusCode, resp.Header.Get("Www-Authenticate"), body)
		}
	}
	// One verification (the refusal is remembered) and nothing else.
	if seen := up.reached(); len(seen) != 1 || seen[0] != "GET /global/health upgrade=" {
		t.Fatalf("the upstream saw %q; want one verification and nothing else", seen)
	}
}

func TestWhatTheHandlerSpendsNothingOnReachesTheUpstreamUnverified(t *testing.T) {
	up := &lockedUpstream{}
	_, front := newProxy(t, up)
	for _, path := range []string{"/site.webmanifest", "/config", "/global/health"} {
		resp, _ := send(t, "GET", front.URL+path, "", "")
		if resp.StatusCode != 401 {
			t.Fatalf("GET %s: %d, want the upstream's own 401", path, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("OPTIONS", front.URL+"/session/"+clientID, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("a preflight: %v %v", resp, err)
	}
	want := "GET /site.webmanifest upgrade=,GET /config upgrade=,GET /global/health upgrade=,OPTIONS /session/" + clientID + " upgrade="
	if seen := strings.Join(up.reached(), ","); seen != want {
		t.Fatalf("the upstream saw %s\nwant %s", seen, want)
	}
}

func TestAnUpgradeHeaderSwitchesNothingOff(t *testing.T) {
	up := &lockedUpstream{}
	_, front := newProxy(t, up)
	do := func(method, path, body string) *http.Response {
		req, _ := http.NewRequest(method, front.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", goodAuth)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Connection", "Upgrade")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := do("POST", "/session", `{"id":"ses_../../x"}`); resp.StatusCode != 400 {
		t.Fatalf("an Upgrade create of a bad id: %d, want 400", resp.StatusCode)
	}
	do("GET", "/session/"+clientID, "")
	seen := up.reached()
	if last := seen[len(seen)-1]; last != "GET /session/"+realID+" upgrade=" {
		t.Fatalf("an Upgrade GET of a session reached the upstream as %q: want its real id, without Upgrade", last)
	}
}
