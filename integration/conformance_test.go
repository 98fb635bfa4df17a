package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// setup is one way of offering client-chosen session ids: a URL that clients
// talk to, and what the conformance suite needs to look behind it.
type setup struct {
	name  string
	url   string
	reply string // what the assistant answers to "hello"
	// backing counts the upstream sessions made for a client id.
	backing func(t *testing.T, id string) int
	// total counts all upstream sessions, to prove bad requests left it alone.
	total func(t *testing.T) int
	// restart restarts what holds the ids (Caddy, and a native upstream).
	restart func(t *testing.T)
	// skip names the behaviours the setup cannot offer, and why.
	skip map[string]string
}

// behaviour is one row of the conformance table.
type behaviour struct {
	name string
	run  func(t *testing.T, s *setup, id func(string) string)
}

var conformance = []behaviour{
	{"create with id", func(t *testing.T, s *setup, id func(string) string) {
		want := id("create")
		r := call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "conformance"}, "")
		var got session
		r.json(t, &got)
		if r.Status != 200 || got.ID != want || got.Title != "conformance" {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		if got := call(t, "GET", s.url+"/session/"+want, nil, ""); got.Status != 200 {
			t.Fatalf("GET by id: %d %s", got.Status, got.Body)
		}
	}},
	{"replay returns the same session", func(t *testing.T, s *setup, id func(string) string) {
		want := id("replay")
		body := map[string]any{"id": want, "title": "same", "metadata": map[string]any{"k": "v"}}
		first := call(t, "POST", s.url+"/session", body, "")
		again := call(t, "POST", s.url+"/session", body, "")
		if first.Status != 200 || again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("first %d, replay %d %q %s", first.Status, again.Status, again.Header.Get("Idempotent-Replayed"), again.Body)
		}
		var a, b struct {
			ID   string                  `json:"id"`
			Time struct{ Created int64 } `json:"time"`
		}
		first.json(t, &a)
		again.json(t, &b)
		if a != b || s.backing(t, want) != 1 {
			t.Fatalf("replay is another session: %s / %s", first.Body, again.Body)
		}
	}},
	{"conflict names the differing fields", func(t *testing.T, s *setup, id func(string) string) {
		want := id("conflict")
		call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "a"}, "")
		r := call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "b", "metadata": map[string]any{"x": 1}}, "")
		var e struct {
			Name string
			Data struct{ Fields []string }
		}
		r.json(t, &e)
		if r.Status != 409 || e.Name != "ConflictError" || !slices.Equal(e.Data.Fields, []string{"title", "metadata"}) {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	}},
	{"bad ids are 400 and leave the upstream alone", func(t *testing.T, s *setup, id func(string) string) {
		checkBadIDs(t, s, "/session")
	}},
	{"bad ids on the v2 create are 400 too", func(t *testing.T, s *setup, id func(string) string) {
		checkBadIDs(t, s, "/api/session")
	}},
	{"concurrent creates make one session", func(t *testing.T, s *setup, id func(string) string) {
		want := id("concurrent")
		var wg sync.WaitGroup
		created := make([]string, 30)
		for i := range created {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "once"}, "")
				var got struct {
					ID   string
					Time struct{ Created int64 }
				}
				r.json(t, &got)
				created[i] = fmt.Sprintf("%d %s %d", r.Status, got.ID, got.Time.Created)
			}()
		}
		wg.Wait()
		for _, c := range created {
			if c != created[0] || !strings.HasPrefix(c, "200 "+want+" ") {
				t.Fatalf("answers differ: %q vs %q", c, created[0])
			}
		}
		if n := s.backing(t, want); n != 1 {
			t.Fatalf("%d upstream sessions for one id", n)
		}
	}},
	{"prompt_async on the id, reply and events under the id", func(t *testing.T, s *setup, id func(string) string) {
		want := id("prompt")
		events := subscribe(t, s.url+"/event", "")
		if r := call(t, "POST", s.url+"/session", map[string]any{"id": want}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		r := call(t, "POST", s.url+"/session/"+want+"/prompt_async",
			map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hello"}}}, "")
		if r.Status != 204 {
			t.Fatalf("prompt_async: %d %s", r.Status, r.Body)
		}
		events.until(t, 90*time.Second, func(e string) bool {
			return strings.Contains(e, `"session.idle"`) && strings.Contains(e, `"sessionID":"`+want+`"`)
		})
		eventually(t, 10*time.Second, "the reply in the messages", func() bool {
			m := call(t, "GET", s.url+"/session/"+want+"/message", nil, "")
			return m.Status == 200 && strings.Contains(string(m.Body), s.reply) && strings.Contains(string(m.Body), `"sessionID":"`+want+`"`)
		})
	}},
	{"fork under an id", func(t *testing.T, s *setup, id func(string) string) {
		parent, whole, early := id("forked"), id("fork"), id("earlyfork")
		if r := call(t, "POST", s.url+"/session", map[string]any{"id": parent, "title": "trunk"}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if r := call(t, "POST", s.url+"/session/"+parent+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "hello"}}}, ""); r.Status != 200 {
			t.Fatalf("prompt: %d %s", r.Status, r.Body)
		}
		var messages []struct {
			Info struct{ ID, SessionID, Role string }
		}
		call(t, "GET", s.url+"/session/"+parent+"/message", nil, "").json(t, &messages)
		if len(messages) != 2 || messages[1].Info.Role != "assistant" {
			t.Fatalf("the parent's messages: %+v", messages)
		}
		forkAt := func(child, messageID string) response {
			body := map[string]any{"id": child}
			if messageID != "" {
				body["messageID"] = messageID
			}
			return call(t, "POST", s.url+"/session/"+parent+"/fork", body, "")
		}
		countMessages := func(child string) int {
			var got []struct{ Info struct{ SessionID string } }
			call(t, "GET", s.url+"/session/"+child+"/message", nil, "").json(t, &got)
			for _, m := range got {
				if m.Info.SessionID != child {
					t.Fatalf("a message of fork %s names session %s", child, m.Info.SessionID)
				}
			}
			return len(got)
		}

		r := forkAt(whole, "")
		var fork session
		r.json(t, &fork)
		if r.Status != 200 || fork.ID != whole || fork.Title != "trunk (fork #1)" || fork.ParentID != "" || r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("fork: %d %s", r.Status, r.Body)
		}
		if tag, ok := fork.Metadata["clientSessionID"]; ok && tag != whole {
			t.Fatalf("the fork names another session's client id: %s", r.Body)
		}
		if n := countMessages(whole); n != 2 {
			t.Fatalf("the fork has %d messages, want the parent's 2", n)
		}
		if again := forkAt(whole, ""); again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("the same fork again: %d %q %s", again.Status, again.Header.Get("Idempotent-Replayed"), again.Body)
		}
		conflictFields := func(r response) []string {
			var e struct {
				Name string
				Data struct{ Fields []string }
			}
			r.json(t, &e)
			if r.Status != 409 || e.Name != "ConflictError" {
				t.Fatalf("want a conflict: %d %s", r.Status, r.Body)
			}
			return e.Data.Fields
		}
		if got := conflictFields(forkAt(whole, messages[1].Info.ID)); !slices.Equal(got, []string{"messageID"}) {
			t.Fatalf("the fork at another message: conflict names %v, want messageID", got)
		}
		if got := conflictFields(call(t, "POST", s.url+"/session", map[string]any{"id": whole, "title": "trunk (fork #1)"}, "")); !slices.Contains(got, "forkOf") {
			t.Fatalf("a create of the fork's id: conflict names %v, want forkOf among them", got)
		}
		if s.backing(t, whole) != 1 {
			t.Fatalf("%d upstream sessions back %s", s.backing(t, whole), whole)
		}

		before := s.total(t)
		for _, bad := range []any{"ses_../x", "nope", 42} {
			if r := call(t, "POST", s.url+"/session/"+parent+"/fork", map[string]any{"id": bad}, ""); r.Status != 400 {
				t.Fatalf("fork under %v: %d %s, want 400", bad, r.Status, r.Body)
			}
		}
		if after := s.total(t); after != before {
			t.Fatalf("refused forks changed the upstream: %d sessions, then %d", before, after)
		}

		if r := forkAt(early, messages[1].Info.ID); r.Status != 200 {
			t.Fatalf("fork at a message: %d %s", r.Status, r.Body)
		}
		if n := countMessages(early); n != 1 {
			t.Fatalf("the fork at the reply has %d messages, want the 1 before it", n)
		}
		if r := call(t, "GET", s.url+"/session/"+parent, nil, ""); r.Status != 200 {
			t.Fatalf("the parent after its forks: %d %s", r.Status, r.Body)
		}
	}},
	{"delete then recreate", func(t *testing.T, s *setup, id func(string) string) {
		want := id("delete")
		call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "one"}, "")
		if r := call(t, "DELETE", s.url+"/session/"+want, nil, ""); r.Status != 200 {
			t.Fatalf("delete: %d %s", r.Status, r.Body)
		}
		if r := call(t, "GET", s.url+"/session/"+want, nil, ""); r.Status != http.StatusNotFound {
			t.Fatalf("after delete: %d %s", r.Status, r.Body)
		}
		r := call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "two"}, "")
		var got session
		r.json(t, &got)
		if r.Status != 200 || got.ID != want || got.Title != "two" || r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("recreate: %d %s", r.Status, r.Body)
		}
		if n := s.backing(t, want); n != 1 {
			t.Fatalf("%d upstream sessions after recreate", n)
		}
	}},
	{"restart keeps the id", func(t *testing.T, s *setup, id func(string) string) {
		want := id("restart")
		call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "kept"}, "")
		s.restart(t)
		r := call(t, "GET", s.url+"/session/"+want, nil, "")
		var got session
		r.json(t, &got)
		if r.Status != 200 || got.ID != want || got.Title != "kept" {
			t.Fatalf("after restart: %d %s", r.Status, r.Body)
		}
		if again := call(t, "POST", s.url+"/session", map[string]any{"id": want, "title": "kept"}, ""); again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("create after restart is not a replay: %d %s", again.Status, again.Body)
		}
	}},
	{"child with a chosen id", func(t *testing.T, s *setup, id func(string) string) {
		parent, child := id("parent"), id("child")
		call(t, "POST", s.url+"/session", map[string]any{"id": parent, "title": "parent"}, "")
		r := call(t, "POST", s.url+"/session", map[string]any{"id": child, "parentID": parent, "title": "child"}, "")
		var got session
		r.json(t, &got)
		if r.Status != 200 || got.ID != child || got.ParentID != parent {
			t.Fatalf("child: %d %s", r.Status, r.Body)
		}
		var children []session
		call(t, "GET", s.url+"/session/"+parent+"/children", nil, "").json(t, &children)
		if len(children) != 1 || children[0].ID != child {
			t.Fatalf("children: %+v", children)
		}
	}},
}

// badIDs are ids every setup must refuse, as JSON values.
var badIDs = []string{`42`, `null`, `"abc"`, `"sesX"`, `"ses_"`, `"ses_a\u0000b"`, `"ses_a\nb"`, `"ses_a/b"`,
	`"ses_../../etc"`, `"ses_café"`, `"ses_` + strings.Repeat("a", 65) + `"`}

func checkBadIDs(t *testing.T, s *setup, route string) {
	before := s.total(t)
	for _, bad := range badIDs {
		r := call(t, "POST", s.url+route, `{"id":`+bad+`}`, "")
		if r.Status != 400 || !strings.Contains(string(r.Body), `"BadRequest"`) {
			t.Errorf("POST %s id %s: %d %s", route, bad, r.Status, r.Body)
		}
	}
	if after := s.total(t); after != before {
		t.Fatalf("upstream went from %d to %d sessions", before, after)
	}
}

// runConformance runs every behaviour against a setup; a behaviour the setup
// cannot offer is skipped with its documented reason.
func runConformance(t *testing.T, s *setup) {
	for i, b := range conformance {
		t.Run(b.name, func(t *testing.T) {
			if reason, ok := s.skip[b.name]; ok {
				t.Skip(reason)
			}
			n := 0
			id := func(name string) string {
				n++
				return fmt.Sprintf("ses_%s_%d_%d_%d", name, i, n, time.Now().UnixNano()%1e9)
			}
			b.run(t, s, id)
		})
	}
}

// opencodeSetup is a setup whose upstream is a stock opencode; real ids are
// found by the tag in their metadata (mapping) or are the ids (direct).
func opencodeSetup(name string, oc *opencode, proxy *caddy, mapped bool) *setup {
	return &setup{
		name:  name,
		url:   proxy.URL,
		reply: ModelReply,
		backing: func(t *testing.T, id string) int {
			if mapped {
				return len(upstreamSessionsOf(t, oc, id))
			}
			var all []session
			call(t, "GET", oc.URL+"/session", nil, "").json(t, &all)
			n := 0
			for _, s := range all {
				if s.ID == id {
					n++
				}
			}
			return n
		},
		total:   func(t *testing.T) int { return upstreamSessionCount(t, oc) },
		restart: func(t *testing.T) { proxy.restart(true) },
	}
}

func nativeSetup(name, url string, n *native, restart func(t *testing.T)) *setup {
	return &setup{
		name:  name,
		url:   url,
		reply: "Reference reply: hello",
		backing: func(t *testing.T, id string) int {
			if call(t, "GET", n.URL+"/session/"+id, nil, "").Status == 200 {
				return 1
			}
			return 0
		},
		total: func(t *testing.T) int {
			var all []session
			call(t, "GET", n.URL+"/session", nil, "").json(t, &all)
			return len(all)
		},
		restart: restart,
	}
}

func TestConformance(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	oc.waitHealthy(t)

	t.Run("mapping mode, stock opencode "+OpencodeVersion, func(t *testing.T) {
		runConformance(t, opencodeSetup(t.Name(), oc, startCaddy(t, oc), true))
	})
	t.Run("direct mode, stock opencode "+OpencodeVersion, func(t *testing.T) {
		proxy := startCaddy(t, oc, "MODE=direct")
		s := opencodeSetup(t.Name(), oc, proxy, false)
		s.skip = map[string]string{
			"fork under an id": "opencode's fork takes no id (the proxy answers 501, checked below)",
		}
		runConformance(t, s)
		t.Run("a fork under an id is 501 and makes nothing", func(t *testing.T) {
			parent := fmt.Sprintf("ses_direct_forked_%d", time.Now().UnixNano())
			if r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": parent}, ""); r.Status != 200 {
				t.Fatalf("create: %d %s", r.Status, r.Body)
			}
			before := upstreamSessionCount(t, oc)
			r := call(t, "POST", proxy.URL+"/session/"+parent+"/fork", map[string]any{"id": parent + "_fork"}, "")
			if r.Status != http.StatusNotImplemented || !strings.Contains(string(r.Body), "use mode mapping") {
				t.Fatalf("fork under an id in direct mode: %d %s", r.Status, r.Body)
			}
			if after := upstreamSessionCount(t, oc); after != before {
				t.Fatalf("the refused fork changed the upstream (%d -> %d)", before, after)
			}
			if r := call(t, "POST", proxy.URL+"/session/"+parent+"/fork", map[string]any{}, ""); r.Status != 200 {
				t.Fatalf("a fork without an id in direct mode: %d %s", r.Status, r.Body)
			}
		})
	})
	t.Run("direct mode, native server", func(t *testing.T) {
		n := startNative(t)
		proxy := startCaddyFor(t, n.URL, "MODE=direct")
		runConformance(t, nativeSetup(t.Name(), proxy.URL, n, func(t *testing.T) {
			n.restart()
			proxy.restart(true)
		}))
	})
	t.Run("native server alone", func(t *testing.T) {
		n := startNative(t)
		s := nativeSetup(t.Name(), n.URL, n, func(t *testing.T) { n.restart() })
		s.skip = map[string]string{
			"bad ids on the v2 create are 400 too": "the native server serves the v1 session API only; it has no POST /api/session (behind the module in direct mode, it does)",
		}
		runConformance(t, s)
	})
	t.Run("mapping mode, stock opencode "+LegacyOpencodeVersion, func(t *testing.T) {
		bin, err := findOrInstallOpencode(LegacyOpencodeVersion)
		if err != nil {
			t.Fatal(err)
		}
		legacy := startOpencodeBin(t, bin, model, "")
		proxy := startCaddy(t, legacy)
		legacy.waitHealthy(t)
		s := opencodeSetup(t.Name(), legacy, proxy, true)
		// 1.15 keeps no session metadata, where mapping mode tags sessions;
		// find them by id through the proxy instead.
		s.backing = func(t *testing.T, id string) int {
			if call(t, "GET", s.url+"/session/"+id, nil, "").Status == 200 {
				return 1
			}
			return 0
		}
		runConformance(t, s)
		t.Run("an interrupted create is adopted without metadata", func(t *testing.T) {
			clientID := fmt.Sprintf("ses_legacy_orphan_%d", time.Now().UnixNano())
			writePending(t, proxy, clientID, idmap.Fields{"title": json.RawMessage(`"legacy orphan"`)})
			var orphan session
			call(t, "POST", legacy.URL+"/session", map[string]any{"title": "legacy orphan"}, "").json(t, &orphan)
			before := upstreamSessionCount(t, legacy)
			r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "legacy orphan"}, "")
			var got session
			r.json(t, &got)
			if r.Status != 200 || got.ID != clientID {
				t.Fatalf("retry: %d %s", r.Status, r.Body)
			}
			if after := upstreamSessionCount(t, legacy); after != before {
				t.Fatalf("the retry made another session (%d -> %d)", before, after)
			}
			direct := call(t, "GET", legacy.URL+"/session/"+orphan.ID, nil, "")
			proxied := call(t, "GET", proxy.URL+"/session/"+clientID, nil, "")
			if strings.Replace(string(direct.Body), orphan.ID, clientID, -1) != string(proxied.Body) {
				t.Fatalf("the id is not mapped to the orphan:\n%s\n%s", direct.Body, proxied.Body)
			}
		})
		t.Run("direct mode refuses an upstream without an id route", func(t *testing.T) {
			direct := startCaddy(t, legacy, "MODE=direct")
			before := upstreamSessionCount(t, legacy)
			r := call(t, "POST", direct.URL+"/session", map[string]any{"id": "ses_refused"}, "")
			if r.Status != http.StatusNotImplemented || !strings.Contains(string(r.Body), "use mode mapping") {
				t.Fatalf("direct create on %s: %d %s", LegacyOpencodeVersion, r.Status, r.Body)
			}
			if after := upstreamSessionCount(t, legacy); after != before {
				t.Fatalf("a refused create changed the upstream (%d -> %d)", before, after)
			}
			if !strings.Contains(direct.out.String(), "direct mode cannot work with this upstream") {
				t.Fatal("the refusal is not in Caddy's log")
			}
		})
	})

	t.Run("direct mode finishes an interrupted create", func(t *testing.T) {
		proxy := startCaddy(t, oc, "MODE=direct")
		clientID := fmt.Sprintf("ses_direct_orphan_%d", time.Now().UnixNano())
		writePending(t, proxy, clientID, idmap.Fields{"title": json.RawMessage(`"finished"`)})
		// The v2 create happened; the PATCH with the title and the record did not.
		if r := call(t, "POST", oc.URL+"/api/session", map[string]any{"id": clientID}, ""); r.Status != 200 {
			t.Fatalf("v2 create: %d %s", r.Status, r.Body)
		}
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "finished"}, "")
		var got session
		r.json(t, &got)
		if r.Status != 200 || got.ID != clientID || got.Title != "finished" {
			t.Fatalf("retry: %d %s", r.Status, r.Body)
		}
		if again := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "finished"}, ""); again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("not recorded: %d %s", again.Status, again.Body)
		}
	})
}
