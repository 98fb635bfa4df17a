package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// TestForkUnderAnIDThroughCrashes: a fork under a chosen id is made once,
// however its first attempt ended. opencode copies the parent's metadata to
// a fork, so the fork an interrupted attempt made may name its parent, not
// its own id; the retry must find that fork and no other.
func TestForkUnderAnIDThroughCrashes(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc)
	oc.waitHealthy(t)
	id := func(name string) string { return fmt.Sprintf("ses_%s_%d", name, time.Now().UnixNano()) }
	newParent := func(t *testing.T, title string) (client, real string) {
		t.Helper()
		client = id("trunk")
		if r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": client, "title": title, "metadata": map[string]any{"team": "a"}}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		return client, realID(t, oc, client)
	}
	// forkUpstream forks on opencode itself: the state an attempt leaves
	// when it dies after the fork and before tagging it.
	forkUpstream := func(t *testing.T, real string) session {
		t.Helper()
		var fork session
		r := call(t, "POST", oc.URL+"/session/"+real+"/fork", map[string]any{}, "")
		r.json(t, &fork)
		if r.Status != 200 || fork.ID == "" {
			t.Fatalf("fork upstream: %d %s", r.Status, r.Body)
		}
		return fork
	}
	forkFields := func(parent string) idmap.Fields {
		return idmap.Fields{"forkOf": json.RawMessage(quotedJSON(parent))}
	}
	forkThroughProxy := func(t *testing.T, url, parent, child string) (response, session) {
		t.Helper()
		r := call(t, "POST", url+"/session/"+parent+"/fork", map[string]any{"id": child}, "")
		var s session
		r.json(t, &s)
		return r, s
	}
	exists := func(t *testing.T, real string) bool {
		return call(t, "GET", oc.URL+"/session/"+real, nil, "").Status == 200
	}

	t.Run("kill -9 of Caddy between the fork and its tagging: the retry finds the fork, and makes no other", func(t *testing.T) {
		crashing := startCaddyWith(t, faultyCaddyBin, "Caddyfile.example", oc.URL, "SESSION_IDS_TEST_FAULT=crash-after-fork")
		parent, parentReal := id("crashtrunk"), ""
		if r := call(t, "POST", crashing.URL+"/session", map[string]any{"id": parent, "title": "crash trunk"}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		parentReal = realID(t, oc, parent)
		child := id("crashfork")
		before := upstreamSessionCount(t, oc)
		if resp, err := http.Post(crashing.URL+"/session/"+parent+"/fork", "application/json", strings.NewReader(`{"id":"`+child+`"}`)); err == nil {
			resp.Body.Close()
			t.Fatalf("the fault hook did not fire: %d", resp.StatusCode)
		}
		<-crashing.done
		if after := upstreamSessionCount(t, oc); after != before+1 {
			t.Fatalf("the crashed fork left %d new sessions upstream, want its one fork", after-before)
		}
		crashing.bin, crashing.env = caddyBin, crashing.env[:len(crashing.env)-1]
		crashing.start()
		r, fork := forkThroughProxy(t, crashing.URL, parent, child)
		if r.Status != 200 || fork.ID != child || fork.Title != "crash trunk (fork #1)" {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if after := upstreamSessionCount(t, oc); after != before+1 {
			t.Fatalf("the retry made another fork: %d new sessions upstream", after-before)
		}
		if !strings.Contains(crashing.out.String(), "adopted the untagged fork of an interrupted fork") {
			t.Fatal("the retry did not adopt the interrupted fork")
		}
		if real := realID(t, oc, child); real == parentReal || !exists(t, parentReal) {
			t.Fatalf("the fork %s is mapped to %s; the parent %s exists: %v", child, real, parentReal, exists(t, parentReal))
		}
		if again, _ := forkThroughProxy(t, crashing.URL, parent, child); again.Status != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("the fork once more: %d %s", again.Status, again.Body)
		}
	})

	t.Run("a fork tagged before the crash is found by its tags", func(t *testing.T) {
		parent, parentReal := newParent(t, "tagged trunk")
		child, attempt := id("taggedfork"), idmap.NewAttempt()
		orphan := forkUpstream(t, parentReal)
		call(t, "PATCH", oc.URL+"/session/"+orphan.ID, map[string]any{"metadata": map[string]any{"team": "a", "clientSessionID": child, "clientSessionAttempt": attempt}}, "")
		writePendingRecord(t, proxy, idmap.Pending{ClientID: child, Fields: forkFields(parent), Started: time.Now(), Attempt: attempt})
		before := upstreamSessionCount(t, oc)
		r, fork := forkThroughProxy(t, proxy.URL, parent, child)
		if r.Status != 200 || fork.ID != child || fork.Metadata["team"] != "a" {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, child); got != orphan.ID {
			t.Fatalf("mapped to %s, want the interrupted fork %s", got, orphan.ID)
		}
		if after := upstreamSessionCount(t, oc); after != before {
			t.Fatalf("the retry made %d more sessions", after-before)
		}
	})

	t.Run("two forks that could be the interrupted one: neither is taken or deleted, and the fork is made again", func(t *testing.T) {
		parent, parentReal := newParent(t, "crowded trunk")
		child := id("crowdedfork")
		writePendingRecord(t, proxy, idmap.Pending{ClientID: child, Fields: forkFields(parent), Started: time.Now(), Attempt: idmap.NewAttempt()})
		one, other := forkUpstream(t, parentReal), forkUpstream(t, parentReal) // one made on the worker behind the proxy's back
		r, fork := forkThroughProxy(t, proxy.URL, parent, child)
		if r.Status != 200 || fork.ID != child {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, child); got == one.ID || got == other.ID {
			t.Fatalf("the fork was mapped to one of two candidates (%s)", got)
		}
		if !exists(t, one.ID) || !exists(t, other.ID) {
			t.Fatal("a candidate was deleted")
		}
		if !strings.Contains(proxy.out.String(), "several match; forking again") {
			t.Fatal("the retry did not see the two candidates")
		}
	})

	t.Run("a fork the attempt recorded is the one adopted, whatever else looks like it", func(t *testing.T) {
		parent, parentReal := newParent(t, "recorded trunk")
		child := id("recordedfork")
		ours, lookalike := forkUpstream(t, parentReal), forkUpstream(t, parentReal)
		writePendingRecord(t, proxy, idmap.Pending{ClientID: child, Fields: forkFields(parent), Started: time.Now(), Attempt: idmap.NewAttempt(), RealID: ours.ID})
		r, fork := forkThroughProxy(t, proxy.URL, parent, child)
		if r.Status != 200 || fork.ID != child || fork.Metadata["clientSessionID"] != child {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, child); got != ours.ID || !exists(t, lookalike.ID) {
			t.Fatalf("mapped to %s, want the recorded fork %s (the lookalike exists: %v)", got, ours.ID, exists(t, lookalike.ID))
		}
	})

	t.Run("forks made through the proxy are never taken for an interrupted one", func(t *testing.T) {
		// A session made without an id carries no tags, and neither do its
		// forks: only the record of the forks the proxy made tells them apart.
		var trunk session
		call(t, "POST", proxy.URL+"/session", map[string]any{"title": "shared trunk"}, "").json(t, &trunk)
		parent := trunk.ID
		child := id("sharedfork")
		writePendingRecord(t, proxy, idmap.Pending{ClientID: child, Fields: forkFields(parent), Started: time.Now(), Attempt: idmap.NewAttempt()})
		// The attempt never reached the upstream (a 503, say); meanwhile
		// another client forks the same session through the proxy.
		var plain session
		if r := call(t, "POST", proxy.URL+"/session/"+parent+"/fork", map[string]any{}, ""); r.Status != 200 {
			t.Fatalf("a plain fork: %d %s", r.Status, r.Body)
		} else {
			r.json(t, &plain)
		}
		r, fork := forkThroughProxy(t, proxy.URL, parent, child)
		if r.Status != 200 || fork.ID != child {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, child); got == plain.ID {
			t.Fatal("the retry took another client's fork")
		}
		if r := call(t, "GET", proxy.URL+"/session/"+plain.ID, nil, ""); r.Status != 200 || strings.Contains(string(r.Body), child) {
			t.Fatalf("the other client's fork: %d %s", r.Status, r.Body)
		}
	})

	t.Run("a retry asking for another message leaves the untagged fork alone", func(t *testing.T) {
		parent, parentReal := newParent(t, "changed trunk")
		child := id("changedfork")
		fields := forkFields(parent)
		fields["messageID"] = json.RawMessage(`"msg_zzzzzzzzzzzzzzzzzzzzzzzzzz"`)
		writePendingRecord(t, proxy, idmap.Pending{ClientID: child, Fields: fields, Started: time.Now(), Attempt: idmap.NewAttempt()})
		orphan := forkUpstream(t, parentReal)
		r, fork := forkThroughProxy(t, proxy.URL, parent, child)
		if r.Status != 200 || fork.ID != child {
			t.Fatalf("the retried fork: %d %s", r.Status, r.Body)
		}
		if got := realID(t, oc, child); got == orphan.ID || !exists(t, orphan.ID) {
			t.Fatalf("mapped to %s; the fork made for another message exists: %v", got, exists(t, orphan.ID))
		}
		if !strings.Contains(proxy.out.String(), "asked for with other fields; leaving it") {
			t.Fatal("the retry did not recognise the fork made for another message")
		}
	})

	t.Run("concurrent forks of one session under different ids and none: each id gets its own fork", func(t *testing.T) {
		parent, _ := newParent(t, "busy trunk")
		const n = 6
		results := make(chan string, 2*n)
		for i := range 2 * n {
			go func() {
				body := map[string]any{}
				if i < n {
					body["id"] = fmt.Sprintf("%s_branch%d", parent, i)
				}
				r := call(t, "POST", proxy.URL+"/session/"+parent+"/fork", body, "")
				var s session
				r.json(t, &s)
				results <- fmt.Sprintf("%d %s %v", r.Status, s.ID, s.Metadata["clientSessionID"])
			}()
		}
		seen := map[string]bool{}
		for range 2 * n {
			got := <-results
			var status int
			var sid, tag string
			fmt.Sscanf(got, "%d %s %s", &status, &sid, &tag)
			if status != 200 || seen[sid] || tag == parent {
				t.Fatalf("a fork: %s", got)
			}
			seen[sid] = true
		}
		for i := range n {
			if up := upstreamSessionsOf(t, oc, fmt.Sprintf("%s_branch%d", parent, i)); len(up) != 1 {
				t.Fatalf("branch %d is backed by %d sessions", i, len(up))
			}
		}
	})
}

func quotedJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
