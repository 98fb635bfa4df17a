package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// TestMappingMode is the product's contract, checked against a stock
// opencode behind the Caddy binary serving Caddyfile.example.
func TestMappingMode(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc)
	oc.waitHealthy(t)
	id := func(name string) string { return fmt.Sprintf("ses_%s_%d", name, time.Now().UnixNano()) }

	t.Run("the seed flow: create with an id, prompt it, see the reply under that id", func(t *testing.T) {
		events := subscribe(t, proxy.URL+"/event", "")
		globalEvents := subscribe(t, proxy.URL+"/global/event", "")
		clientID := id("seed")

		created := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "seed"}, "")
		var s session
		created.json(t, &s)
		if created.Status != 200 || s.ID != clientID || s.Title != "seed" {
			t.Fatalf("create: %d %s", created.Status, created.Body)
		}
		real := realID(t, oc, clientID)
		if real == clientID {
			t.Fatal("stock opencode honoured the id; this test proves nothing")
		}

		prompt := call(t, "POST", proxy.URL+"/session/"+clientID+"/prompt_async",
			map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hello"}}}, "")
		if prompt.Status != 204 {
			t.Fatalf("prompt_async: %d %s", prompt.Status, prompt.Body)
		}

		seen := events.until(t, 90*time.Second, func(e string) bool {
			return strings.Contains(e, `"session.idle"`) && strings.Contains(e, clientID)
		})
		all := strings.Join(seen, "\n")
		if strings.Contains(all, real) {
			t.Fatalf("the event stream carried the real id %s:\n%s", real, all)
		}
		if !strings.Contains(all, `"type":"session.created"`) || !strings.Contains(all, `"sessionID":"`+clientID+`"`) {
			t.Fatalf("session.created under the client id is missing:\n%s", all)
		}

		global := strings.Join(globalEvents.until(t, 30*time.Second, func(e string) bool {
			return strings.Contains(e, `"session.idle"`) && strings.Contains(e, clientID)
		}), "\n")
		if strings.Contains(global, real) {
			t.Fatalf("/global/event carried the real id %s:\n%s", real, global)
		}

		messages := call(t, "GET", proxy.URL+"/session/"+clientID+"/message", nil, "")
		if messages.Status != 200 || !strings.Contains(string(messages.Body), ModelReply) {
			t.Fatalf("messages lack the reply: %d %s", messages.Status, messages.Body)
		}
		if strings.Contains(string(messages.Body), real) || !strings.Contains(string(messages.Body), `"sessionID":"`+clientID+`"`) {
			t.Fatalf("messages carry the wrong session id: %s", messages.Body)
		}
	})

	t.Run("a replay of the same create returns the same session, marked", func(t *testing.T) {
		clientID := id("replay")
		body := map[string]any{"id": clientID, "title": "t", "metadata": map[string]any{"worker": 7}}
		first := call(t, "POST", proxy.URL+"/session", body, "")
		again := call(t, "POST", proxy.URL+"/session", body, "")
		if first.Status != 200 || again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("create %d, replay %d %q: %s", first.Status, again.Status, again.Header.Get("Idempotent-Replayed"), again.Body)
		}
		if first.Header.Get("Idempotent-Replayed") != "" {
			t.Fatal("a first create is marked as a replay")
		}
		var a, b session
		first.json(t, &a)
		again.json(t, &b)
		if a.ID != clientID || b.ID != clientID || len(upstreamSessionsOf(t, oc, clientID)) != 1 {
			t.Fatalf("replay made or showed another session: %s / %s", first.Body, again.Body)
		}
	})

	t.Run("a create of an existing id with other fields is a 409 naming them", func(t *testing.T) {
		clientID := id("conflict")
		call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "t", "agent": "build"}, "")
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "u", "agent": "plan"}, "")
		var e struct {
			Name string `json:"name"`
			Data struct {
				Fields []string `json:"fields"`
			} `json:"data"`
		}
		r.json(t, &e)
		if r.Status != 409 || e.Name != "ConflictError" || strings.Join(e.Data.Fields, ",") != "title,agent" {
			t.Fatalf("conflict: %d %s", r.Status, r.Body)
		}
	})

	t.Run("duplicate policies return and reject", func(t *testing.T) {
		for policy, wantStatus := range map[string]int{"return": 200, "reject": 409} {
			p := startCaddy(t, oc, "DUPLICATES="+policy)
			clientID := id(policy)
			call(t, "POST", p.URL+"/session", map[string]any{"id": clientID, "title": "t"}, "")
			r := call(t, "POST", p.URL+"/session", map[string]any{"id": clientID, "title": "other"}, "")
			if r.Status != wantStatus {
				t.Errorf("duplicates %s: second create %d %s, want %d", policy, r.Status, r.Body, wantStatus)
			}
			p.stop()
		}
	})

	t.Run("50 concurrent creates of one id make one upstream session", func(t *testing.T) {
		clientID := id("concurrent")
		var wg sync.WaitGroup
		statuses := make([]int, 50)
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "same"}, "")
				var s session
				if json.Unmarshal(r.Body, &s) == nil && s.ID != clientID {
					t.Errorf("answer with id %q", s.ID)
				}
				statuses[i] = r.Status
			}()
		}
		wg.Wait()
		for i, s := range statuses {
			if s != 200 {
				t.Fatalf("create %d answered %d", i, s)
			}
		}
		if n := len(upstreamSessionsOf(t, oc, clientID)); n != 1 {
			t.Fatalf("upstream has %d sessions for one id", n)
		}
	})

	t.Run("mappings survive reload, restart and kill -9 of Caddy", func(t *testing.T) {
		clientID := id("restart")
		if r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		check := func(when string) {
			t.Helper()
			r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, "")
			var s session
			r.json(t, &s)
			if r.Status != 200 || s.ID != clientID {
				t.Fatalf("after %s: %d %s", when, r.Status, r.Body)
			}
		}
		reload := startProcess(t, "caddy reload", repoRoot, proxy.env, caddyBin, "reload", "--config", "Caddyfile.example", "--force")
		<-reload.done
		if reload.cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("caddy reload failed: %s", reload.out.String())
		}
		check("reload")
		proxy.restart(false)
		check("restart")
		proxy.restart(true)
		check("kill -9")
	})

	t.Run("delete removes the session and frees the id", func(t *testing.T) {
		clientID := id("delete")
		call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "first"}, "")
		first := realID(t, oc, clientID)
		if r := call(t, "DELETE", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 200 || string(r.Body) != "true" {
			t.Fatalf("delete: %d %s", r.Status, r.Body)
		}
		if r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 404 || strings.Contains(string(r.Body), first) {
			t.Fatalf("get after delete: %d %s", r.Status, r.Body)
		}
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "second"}, "")
		var s session
		r.json(t, &s)
		if r.Status != 200 || s.ID != clientID || s.Title != "second" || r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("recreate: %d %s", r.Status, r.Body)
		}
		if second := realID(t, oc, clientID); second == first {
			t.Fatal("recreate reused the deleted session")
		}
	})

	t.Run("bad ids and bodies get 400 and never reach the upstream", func(t *testing.T) {
		before := upstreamSessionCount(t, oc)
		for name, body := range map[string]string{
			"number":       `{"id": 42}`,
			"null":         `{"id": null}`,
			"no prefix":    `{"id": "abc"}`,
			"prefix only":  `{"id": "ses_"}`,
			"NUL":          `{"id": "ses_a\u0000b"}`,
			"newline":      `{"id": "ses_a\nb"}`,
			"slash":        `{"id": "ses_a/b"}`,
			"dot dot":      `{"id": "ses_../../etc"}`,
			"unicode":      `{"id": "ses_café"}`,
			"too long":     `{"id": "ses_` + strings.Repeat("a", 65) + `"}`,
			"invalid JSON": `{"id": "ses_a"`,
			"not object":   `["ses_a"]`,
			"bad metadata": `{"id": "ses_okay", "metadata": "x"}`,
		} {
			r := call(t, "POST", proxy.URL+"/session", body, "")
			var e struct {
				Name string         `json:"name"`
				Data map[string]any `json:"data"`
			}
			r.json(t, &e)
			if r.Status != 400 || e.Name != "BadRequest" || e.Data["message"] == "" {
				t.Errorf("%s: %d %s", name, r.Status, r.Body)
			}
		}
		if after := upstreamSessionCount(t, oc); after != before {
			t.Fatalf("bad creates changed the upstream: %d sessions before, %d after", before, after)
		}
	})

	t.Run("an id that is already an unmapped upstream session is a 409", func(t *testing.T) {
		var direct session
		call(t, "POST", oc.URL+"/session", map[string]any{"title": "direct"}, "").json(t, &direct)
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": direct.ID}, "")
		if r.Status != 409 {
			t.Fatalf("create over an upstream session: %d %s", r.Status, r.Body)
		}
	})

	t.Run("an interrupted create is adopted, not repeated", func(t *testing.T) {
		// The state a crash between the upstream create and the mapping write
		// leaves: a pending record and a tagged upstream session, no mapping.
		clientID := id("orphan")
		path := writePending(t, proxy, clientID, idmap.Fields{"title": json.RawMessage(`"orphan"`)})
		var orphan session
		call(t, "POST", oc.URL+"/session", map[string]any{"title": "orphan", "metadata": map[string]any{"clientSessionID": clientID}}, "").json(t, &orphan)

		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "orphan"}, "")
		var s session
		r.json(t, &s)
		if r.Status != 200 || s.ID != clientID {
			t.Fatalf("retry after interruption: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, clientID); got != orphan.ID {
			t.Fatalf("mapped to %s, want the orphan %s", got, orphan.ID)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("pending record left behind: %v", err)
		}
	})

	t.Run("a fork of an earlier session of the id is never adopted, nor deleted", func(t *testing.T) {
		// opencode's fork copies metadata: the fork carries the client id
		// its parent was made under. After the parent is deleted, a retried
		// create of the id (its first try got a 503, or Caddy was killed
		// before it went up) must make a new session, and leave the fork be.
		clientID := id("forked")
		if r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "fork test"}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		// Through the proxy a fork loses the parent's tags at once; the state
		// its crash can leave in between is a session with the parent's
		// metadata, copied whole, and the fork's title.
		var parent, fork session
		call(t, "GET", oc.URL+"/session/"+realID(t, oc, clientID), nil, "").json(t, &parent)
		call(t, "POST", oc.URL+"/session", map[string]any{"title": "fork test (fork #1)", "metadata": parent.Metadata}, "").json(t, &fork)
		if fork.ID == "" || fork.Metadata["clientSessionAttempt"] == nil {
			t.Fatalf("the fork's state: %+v (parent %+v)", fork, parent)
		}
		for _, asked := range []string{`"fork test"`, `"another title"`} {
			if r := call(t, "DELETE", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 200 {
				t.Fatalf("delete: %d %s", r.Status, r.Body)
			}
			writePendingRecord(t, proxy, idmap.Pending{ClientID: clientID, Fields: idmap.Fields{"title": json.RawMessage(asked)},
				Started: time.Now(), Attempt: idmap.NewAttempt()})
			r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "fork test"}, "")
			var s session
			r.json(t, &s)
			if r.Status != 200 || s.ID != clientID || s.Title != "fork test" || r.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("the retried create (pending title %s): %d %s, want a new session", asked, r.Status, r.Body)
			}
			if r := call(t, "GET", oc.URL+"/session/"+fork.ID, nil, ""); r.Status != 200 {
				t.Fatalf("the fork is gone upstream (pending title %s): %d %s", asked, r.Status, r.Body)
			}
		}
	})

	t.Run("a fork names no other session's client id", func(t *testing.T) {
		clientID := id("forkparent")
		call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "parent", "metadata": map[string]any{"team": "a"}}, "")
		events := subscribe(t, proxy.URL+"/event", "")
		r := call(t, "POST", proxy.URL+"/session/"+clientID+"/fork", map[string]any{}, "")
		var fork session
		r.json(t, &fork)
		withID := clientID + "_branch"
		if r := call(t, "POST", proxy.URL+"/session/"+clientID+"/fork", map[string]any{"id": withID}, ""); r.Status != 200 {
			t.Fatalf("the fork under an id: %d %s", r.Status, r.Body)
		}
		// opencode announces a fork with the metadata it copied; the
		// stream names each fork by its own id.
		created := map[string]string{}
		events.until(t, 30*time.Second, func(e string) bool {
			var ev struct {
				Type       string
				Properties struct {
					Info session
				}
			}
			if json.Unmarshal([]byte(e), &ev) == nil && ev.Type == "session.created" {
				tag, _ := ev.Properties.Info.Metadata["clientSessionID"].(string)
				created[ev.Properties.Info.ID] = tag
			}
			_, a := created[fork.ID]
			_, b := created[withID]
			return a && b
		})
		if created[fork.ID] != fork.ID || created[withID] != withID {
			t.Fatalf("the forks were announced with the tags %v; want each its own id (%s, %s)", created, fork.ID, withID)
		}
		if r.Status != 200 || fork.ID == clientID || fork.Metadata["clientSessionID"] != nil || fork.Metadata["clientSessionAttempt"] != nil {
			t.Fatalf("the fork's answer: %d %s", r.Status, r.Body)
		}
		if fork.Metadata["team"] != "a" {
			t.Fatalf("the fork lost the parent's own metadata: %s", r.Body)
		}
		var upstreamFork session
		call(t, "GET", oc.URL+"/session/"+fork.ID, nil, "").json(t, &upstreamFork)
		if upstreamFork.Metadata["clientSessionID"] != nil {
			t.Fatalf("the fork keeps the parent's tag upstream: %+v", upstreamFork.Metadata)
		}
		if sessions := upstreamSessionsOf(t, oc, clientID); len(sessions) != 1 {
			t.Fatalf("%d upstream sessions carry %s, want only its own", len(sessions), clientID)
		}
	})

	t.Run("a child session names its parent by client id", func(t *testing.T) {
		parent, child := id("parent"), id("child")
		call(t, "POST", proxy.URL+"/session", map[string]any{"id": parent}, "")
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": child, "parentID": parent}, "")
		var s session
		r.json(t, &s)
		if r.Status != 200 || s.ID != child || s.ParentID != parent {
			t.Fatalf("child: %d %s", r.Status, r.Body)
		}
		if up := upstreamSessionsOf(t, oc, child); len(up) != 1 || up[0].ParentID != realID(t, oc, parent) {
			t.Fatalf("upstream child does not point at the real parent: %+v", up)
		}
		var children []session
		call(t, "GET", proxy.URL+"/session/"+parent+"/children", nil, "").json(t, &children)
		if len(children) != 1 || children[0].ID != child {
			t.Fatalf("children of %s: %+v", parent, children)
		}
	})

	t.Run("sessions created without an id pass through untouched", func(t *testing.T) {
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"title": "plain"}, "")
		var s session
		r.json(t, &s)
		if r.Status != 200 || !strings.HasPrefix(s.ID, "ses_") {
			t.Fatalf("plain create: %d %s", r.Status, r.Body)
		}
		direct := call(t, "GET", oc.URL+"/session/"+s.ID, nil, "")
		proxied := call(t, "GET", proxy.URL+"/session/"+s.ID, nil, "")
		if string(direct.Body) != string(proxied.Body) {
			t.Fatalf("unmapped session changed on its way:\n%s\n%s", direct.Body, proxied.Body)
		}
	})
}

// writePending leaves the pending record a create interrupted after its
// upstream call would leave, and returns its path.
func writePending(t *testing.T, proxy *caddy, clientID string, fields idmap.Fields) string {
	t.Helper()
	return writePendingRecord(t, proxy, idmap.Pending{ClientID: clientID, Fields: fields, Started: time.Now()})
}

// writePendingRecord leaves a pending record as it is and returns its path.
func writePendingRecord(t *testing.T, proxy *caddy, p idmap.Pending) string {
	t.Helper()
	pending, _ := json.Marshal(p)
	path := filepath.Join(proxy.DataDir, "caddy", idmap.StorageRoot, "default", "pending", p.ClientID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pending, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCreateAtSpawnWithBasicAuth starts opencode (with a password) and Caddy
// together and sends the seed's create as soon as Caddy listens, while
// opencode is still refusing, then hanging, connections.
func TestCreateAtSpawnWithBasicAuth(t *testing.T) {
	model := startFakeModel(t)
	const password = "s3cret"
	oc := startOpencode(t, model, password)
	auth := "Basic " + basicAuth("opencode", password)
	proxy := startCaddy(t, oc, "UPSTREAM_AUTHORIZATION="+auth)

	start := time.Now()
	clientID := "ses_spawned"
	r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "at spawn"}, password)
	var s session
	r.json(t, &s)
	if r.Status != 200 || s.ID != clientID {
		t.Fatalf("create at spawn: %d %s", r.Status, r.Body)
	}
	t.Logf("create sent at spawn answered after %v", time.Since(start).Round(time.Millisecond))

	if r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 401 {
		t.Fatalf("without credentials: %d, want opencode's 401", r.Status)
	}
	if r := call(t, "POST", proxy.URL+"/session/"+clientID+"/prompt_async",
		map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hi"}}}, password); r.Status != 204 {
		t.Fatalf("prompt_async: %d %s", r.Status, r.Body)
	}
	eventually(t, 90*time.Second, "the reply", func() bool {
		r := call(t, "GET", proxy.URL+"/session/"+clientID+"/message", nil, password)
		return r.Status == 200 && strings.Contains(string(r.Body), ModelReply)
	})
}
