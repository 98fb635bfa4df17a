package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSecurity tries, as an attacker would, every way issue 15 found to get
// an answer, a record or work out of the proxy without the password opencode
// asks for: each probe must be answered exactly as opencode answers it (401,
// its WWW-Authenticate, an empty body), with Caddy's storage unchanged.
// It runs in mapping mode, in direct mode and with two workers.
func TestSecurity(t *testing.T) {
	model := startFakeModel(t)
	const password = "s3cret"
	first, second := startOpencode(t, model, password), startOpencode(t, model, password)
	health := "UPSTREAM_AUTHORIZATION=Basic " + basicAuth("opencode", password)
	setups := []struct {
		name     string
		upstream string
		env      []string
	}{
		{"mapping", first.URL, nil},
		{"direct", first.URL, []string{"MODE=direct", "NAMESPACE=direct"}},
		{"two workers", upstreamList([]*opencode{first, second}), []string{"NAMESPACE=fleet"}},
	}
	first.waitHealthy(t)
	second.waitHealthy(t)
	for _, setup := range setups {
		t.Run(setup.name, func(t *testing.T) {
			proxy := startCaddyFor(t, setup.upstream, append([]string{health}, setup.env...)...)
			probeSecurity(t, proxy, first, password, strings.ReplaceAll(setup.name, " ", "-"))
		})
	}
	t.Run("a move between workers that ask for a password uses upstream_authorization", func(t *testing.T) {
		workers := upstreamList([]*opencode{first, second})
		with := startCaddyFor(t, workers, health, "NAMESPACE=moves", "PLACEMENT=first")
		sid := fmt.Sprintf("ses_secure_move_%d", time.Now().UnixNano())
		if r := call(t, "POST", with.URL+"/session", map[string]any{"id": sid}, password); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		to := strings.TrimPrefix(second.URL, "http://")
		if r := admin(t, with, "POST", "/session_ids/move", map[string]any{"session": sid, "to": to}); r.Status != 200 {
			t.Fatalf("a move with upstream_authorization: %d %s", r.Status, r.Body)
		}
		if r := call(t, "GET", with.URL+"/session/"+sid, nil, password); r.Status != 200 || len(upstreamSessionsOf(t, second, sid)) != 1 {
			t.Fatalf("the session after the move: %d %s", r.Status, r.Body)
		}
	})
}

// rawRequest is one request, sent as it is to opencode and to the proxy.
type rawRequest struct {
	method, path string
	header       http.Header
	body         []byte
}

func (q rawRequest) send(t *testing.T, base string) response {
	t.Helper()
	req, err := http.NewRequest(q.method, base+q.path, bytes.NewReader(q.body))
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range q.header {
		req.Header[name] = values
	}
	if len(q.body) > 0 && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	// A probe with Upgrade headers gets a connection of its own: opencode
	// may close the one it answered on, and a pooled connection reused
	// after that answers EOF (seen once in CI).
	req.Close = req.Header.Get("Upgrade") != ""
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

func jsonBody(v any) []byte {
	raw, _ := json.Marshal(v)
	return raw
}

func probeSecurity(t *testing.T, proxy *caddy, oc *opencode, password, tag string) {
	good := http.Header{"Authorization": {"Basic " + basicAuth("opencode", password)}}
	wrong := http.Header{"Authorization": {"Basic " + basicAuth("opencode", "guess")}}
	token := url.QueryEscape(basicAuth("opencode", password))
	wrongToken := url.QueryEscape(basicAuth("opencode", "guess"))

	// The victim's session, a keyed prompt_async and a keyed synchronous
	// prompt whose whole reply the proxy keeps.
	victim := "ses_victim-" + tag
	create := jsonBody(map[string]any{"id": victim, "title": "secret plans"})
	if r := (rawRequest{"POST", "/session", good, create}).send(t, proxy.URL); r.Status != 200 {
		t.Fatalf("the victim's create: %d %s", r.Status, r.Body)
	}
	prompt := jsonBody(map[string]any{"parts": []any{map[string]any{"type": "text", "text": "the launch codes are 0000"}}})
	keyed := func(h http.Header, key string) http.Header {
		h = h.Clone()
		if h == nil {
			h = http.Header{}
		}
		h.Set("Idempotency-Key", key)
		return h
	}
	if r := (rawRequest{"POST", "/session/" + victim + "/prompt_async", keyed(good, "async-key"), prompt}).send(t, proxy.URL); r.Status != 204 {
		t.Fatalf("the victim's keyed prompt_async: %d %s", r.Status, r.Body)
	}
	if r := (rawRequest{"POST", "/session/" + victim + "/message", keyed(good, "sync-key"), prompt}).send(t, proxy.URL); r.Status != 200 || !strings.Contains(string(r.Body), ModelReply) {
		t.Fatalf("the victim's keyed message: %d %s", r.Status, r.Body)
	}
	var listed []session
	(rawRequest{"GET", "/session", good, nil}).send(t, oc.URL).json(t, &listed)
	someRealID := listed[0].ID

	// The attacker: no credentials, a wrong password, a wrong auth_token.
	attackers := map[string]func(rawRequest) rawRequest{
		"no credentials": func(q rawRequest) rawRequest { return q },
		"wrong password": func(q rawRequest) rawRequest {
			q.header = mergeHeader(q.header, wrong)
			return q
		},
		"wrong auth_token": func(q rawRequest) rawRequest {
			q.path += sep(q.path) + "auth_token=" + wrongToken
			return q
		},
	}
	other := jsonBody(map[string]any{"parts": []any{map[string]any{"type": "text", "text": "something else"}}})
	probes := map[string]rawRequest{
		"the keyed message's replay":      {"POST", "/session/" + victim + "/message", keyed(nil, "sync-key"), prompt},
		"the keyed prompt_async's replay": {"POST", "/session/" + victim + "/prompt_async", keyed(nil, "async-key"), prompt},
		"the key with another body (422)": {"POST", "/session/" + victim + "/prompt_async", keyed(nil, "async-key"), other},
		"a create of the id, another title (409)": {"POST", "/session", nil,
			jsonBody(map[string]any{"id": victim, "title": "guess"})},
		"a create of another session's real id": {"POST", "/session", nil, jsonBody(map[string]any{"id": someRealID})},
		"a v2 create of the id":                 {"POST", "/api/session", nil, jsonBody(map[string]any{"id": victim, "title": "guess"})},
		"the session read":                      {"GET", "/session/" + victim, nil, nil},
		"the session list (fleet-wide read)":    {"GET", "/session", nil, nil},
		"the event stream":                      {"GET", "/event", nil, nil},
		"the global event stream":               {"GET", "/global/event", nil, nil},
		"a path that is no id":                  {"GET", "/session/%2e%2e/", nil, nil},
		"an Upgrade on a create":                {"POST", "/session", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, jsonBody(map[string]any{"id": "ses_../../x"})},
		"the OpenAPI document":                  {"GET", "/doc", nil, nil},
	}
	before := storageFiles(t, proxy)
	for attacker, as := range attackers {
		for name, probe := range probes {
			q := as(probe)
			direct, proxied := q.send(t, oc.URL), q.send(t, proxy.URL)
			if direct.Status != 401 {
				t.Fatalf("%s, %s: opencode itself answered %d, the test expects its 401", attacker, name, direct.Status)
			}
			if proxied.Status != direct.Status || proxied.Header.Get("Www-Authenticate") != direct.Header.Get("Www-Authenticate") ||
				!bytes.Equal(proxied.Body, direct.Body) || proxied.Header.Get("Idempotent-Replayed") != "" {
				t.Errorf("%s, %s: the proxy answered %d %q %q (replayed %q); opencode answers %d %q %q",
					attacker, name, proxied.Status, proxied.Header.Get("Www-Authenticate"), proxied.Body, proxied.Header.Get("Idempotent-Replayed"),
					direct.Status, direct.Header.Get("Www-Authenticate"), direct.Body)
			}
		}
	}

	// 300 unauthenticated keyed prompts to distinct well-formed ids leave
	// nothing in storage.
	for i := 0; i < 300; i++ {
		q := rawRequest{"POST", fmt.Sprintf("/session/ses_probe%d/prompt_async", i), keyed(nil, fmt.Sprint("k", i)), prompt}
		if r := q.send(t, proxy.URL); r.Status != 401 {
			t.Fatalf("unauthenticated keyed prompt %d: %d", i, r.Status)
		}
	}
	if after := storageFiles(t, proxy); after != before {
		t.Errorf("refused callers changed Caddy's storage: %d files before, %d after", before, after)
	}

	// A body of 100,000 distinct ids costs about what opencode spends to
	// refuse it: the proxy reads none of it before the caller is known.
	var many bytes.Buffer
	many.WriteString(`{"parts":[{"type":"text","text":"`)
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&many, "ses_%d ", i)
	}
	many.WriteString(`"}]}`)
	flood := rawRequest{"POST", "/session/" + victim + "/message", nil, many.Bytes()}
	cpu := caddyCPU(t, proxy)
	start := time.Now()
	direct := flood.send(t, oc.URL)
	directTook := time.Since(start)
	start = time.Now()
	proxied := flood.send(t, proxy.URL)
	proxiedTook := time.Since(start)
	spent := caddyCPU(t, proxy) - cpu
	t.Logf("a body of 100,000 ids, unauthenticated: opencode %d in %v, the proxy %d in %v (Caddy CPU %v)", direct.Status, directTook, proxied.Status, proxiedTook, spent)
	if proxied.Status != 401 || spent > 300*time.Millisecond {
		t.Errorf("the 100,000-id body: %d after %v of Caddy CPU; want 401 for the cost of reading it (it cost 0.93 s before the gate)", proxied.Status, spent)
	}
	// Authorized, it is refused before any lookup, as an oversized body.
	if tag != "direct" { // direct mode looks nothing up: the prompt would go in
		flood.header = good
		if r := flood.send(t, proxy.URL); r.Status != 413 {
			t.Errorf("an authorized body of 100,000 ids in mapping mode: %d %s, want 413", r.Status, r.Body)
		}
	}

	// Credentials in the query are credentials: a replay with a good
	// auth_token is served.
	r := rawRequest{"POST", "/session?auth_token=" + token, nil, create}.send(t, proxy.URL)
	if r.Status != 200 || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the create replay with a good auth_token: %d %s", r.Status, r.Body)
	}
	r = rawRequest{"GET", "/session/" + victim + "/message?auth_token=" + token, nil, nil}.send(t, proxy.URL)
	if r.Status != 200 || !strings.Contains(string(r.Body), ModelReply) {
		t.Errorf("the messages with a good auth_token: %d %.200s", r.Status, r.Body)
	}

	// Authorized, an Upgrade header switches nothing off.
	upgrade := mergeHeader(good, http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}})
	if r := (rawRequest{"POST", "/session", upgrade, jsonBody(map[string]any{"id": "ses_../../x"})}).send(t, proxy.URL); r.Status != 400 {
		t.Errorf("an Upgrade create of ses_../../x: %d %s, want the 400 of a bad id", r.Status, r.Body)
	}
	again := rawRequest{"POST", "/session/" + victim + "/prompt_async", keyed(upgrade, "async-key"), prompt}.send(t, proxy.URL)
	if again.Status != 204 || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the keyed prompt again with an Upgrade header: %d replayed=%q, want the replay", again.Status, again.Header.Get("Idempotent-Replayed"))
	}

	// Authorized, a path that is no id is never a storage key, and no answer
	// names where the storage is.
	r = rawRequest{"GET", "/session/%2e%2e/", good, nil}.send(t, proxy.URL)
	if strings.Contains(string(r.Body), proxy.DataDir) || strings.Contains(string(r.Body), "/caddy/") {
		t.Errorf("GET /session/%%2e%%2e/ named the storage: %d %s", r.Status, r.Body)
	}
}

func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&"
	}
	return "?"
}

func mergeHeader(a, b http.Header) http.Header {
	out := a.Clone()
	if out == nil {
		out = http.Header{}
	}
	for name, values := range b {
		out[name] = values
	}
	return out
}

// storageFiles counts the files of a Caddy's storage (its data folder).
func storageFiles(t *testing.T, c *caddy) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(filepath.Join(c.DataDir, "caddy"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != filepath.Join(c.DataDir, "caddy") {
			n++ // files and folders alike: an empty folder left behind counts
		}
		return nil
	})
	return n
}

// caddyCPU is the CPU time the Caddy process has used so far.
func caddyCPU(t *testing.T, c *caddy) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// TestTrustAnAuthHandlerBefore: with `auth trust`, a basic_auth placed
// before session_ids decides who is served, in front of an opencode without
// a password; keyed prompts are each user's own, and a request that reached
// session_ids without passing an auth handler is refused.
func TestTrustAnAuthHandlerBefore(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	hash := func(password string) string {
		out, err := exec.Command(caddyBin, "hash-password", "--plaintext", password).Output()
		if err != nil {
			t.Fatalf("caddy hash-password: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	config := filepath.Join(t.TempDir(), "Caddyfile")
	caddyfile := fmt.Sprintf(`{
	admin {$ADMIN}
}
http://{$LISTEN} {
	bind 127.0.0.1
	route {
		# The event streams are left out on purpose: a misconfiguration.
		basic_auth /session* {
			alice %s
			bob %s
		}
		session_ids {
			auth trust
		}
		reverse_proxy {$UPSTREAM} {
			health_uri /global/health
			health_interval 250ms
			lb_try_duration 30s
		}
	}
}
`, hash("alice-pw"), hash("bob-pw"))
	if err := os.WriteFile(config, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy := startCaddyWith(t, caddyBin, config, oc.URL)
	oc.waitHealthy(t)
	as := func(user, password string) http.Header {
		return http.Header{"Authorization": {"Basic " + basicAuth(user, password)}}
	}
	alice, bob := as("alice", "alice-pw"), as("bob", "bob-pw")

	if r := (rawRequest{"POST", "/session", nil, jsonBody(map[string]any{"id": "ses_trusted"})}).send(t, proxy.URL); r.Status != 401 {
		t.Fatalf("no credentials: %d, want basic_auth's 401", r.Status)
	}
	if r := (rawRequest{"POST", "/session", as("alice", "guess"), jsonBody(map[string]any{"id": "ses_trusted"})}).send(t, proxy.URL); r.Status != 401 {
		t.Fatalf("a wrong password: %d, want basic_auth's 401", r.Status)
	}
	if r := (rawRequest{"POST", "/session", alice, jsonBody(map[string]any{"id": "ses_trusted"})}).send(t, proxy.URL); r.Status != 200 {
		t.Fatalf("alice's create: %d %s", r.Status, r.Body)
	}
	// Mappings are everyone's: bob reads alice's session by its id.
	if r := (rawRequest{"GET", "/session/ses_trusted", bob, nil}).send(t, proxy.URL); r.Status != 200 {
		t.Fatalf("bob's read of the session: %d %s", r.Status, r.Body)
	}

	prompt := jsonBody(map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hi"}}})
	keyed := func(h http.Header) http.Header { return mergeHeader(h, http.Header{"Idempotency-Key": {"shared-key"}}) }
	send := func(h http.Header) response {
		return rawRequest{"POST", "/session/ses_trusted/message", keyed(h), prompt}.send(t, proxy.URL)
	}
	first, replay, bobs := send(alice), send(alice), send(bob)
	if first.Status != 200 || replay.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("alice's keyed prompt and its retry: %d, replayed=%q", first.Status, replay.Header.Get("Idempotent-Replayed"))
	}
	if bobs.Status != 200 || bobs.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("bob's prompt under alice's key: %d replayed=%q, want a prompt of his own", bobs.Status, bobs.Header.Get("Idempotent-Replayed"))
	}
	var messages []struct {
		Info struct{ Role string } `json:"info"`
	}
	(rawRequest{"GET", "/session/ses_trusted/message", alice, nil}).send(t, proxy.URL).json(t, &messages)
	users := 0
	for _, m := range messages {
		if m.Info.Role == "user" {
			users++
		}
	}
	if users != 2 {
		t.Fatalf("%d user messages, want 2: alice's once, bob's once", users)
	}

	// A route without the auth handler is refused, not served to anyone.
	if r := (rawRequest{"GET", "/event", nil, nil}).send(t, proxy.URL); r.Status != 401 {
		t.Fatalf("/event without an auth handler on its route: %d, want 401", r.Status)
	}
}
