package nativeserver

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func messagesOf(t *testing.T, url string) []Message {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []Message
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestForkUnderAChosenID(t *testing.T) {
	ts := newTestServer(t, t.TempDir())
	post(t, ts.URL+"/session", `{"id":"ses_parent","title":"p","metadata":{"k":"v"}}`)
	for _, text := range []string{"one", "two"} {
		if resp, _ := post(t, ts.URL+"/session/ses_parent/message", `{"parts":[{"type":"text","text":"`+text+`"}]}`); resp.StatusCode != 200 {
			t.Fatalf("prompt: %d", resp.StatusCode)
		}
	}
	parentMessages := messagesOf(t, ts.URL+"/session/ses_parent/message")
	if len(parentMessages) != 4 {
		t.Fatalf("parent has %d messages, want 4", len(parentMessages))
	}

	t.Run("the fork is made under the id, titled and tagged as opencode does", func(t *testing.T) {
		resp, fork := post(t, ts.URL+"/session/ses_parent/fork", `{"id":"ses_branch"}`)
		if resp.StatusCode != 200 || fork["id"] != "ses_branch" || fork["title"] != "p (fork #1)" || fork["parentID"] != nil {
			t.Fatalf("fork: %d %v", resp.StatusCode, fork)
		}
		if meta, _ := fork["metadata"].(map[string]any); meta["k"] != "v" {
			t.Errorf("the fork's metadata is %v, want the parent's", fork["metadata"])
		}
		if got := messagesOf(t, ts.URL+"/session/ses_branch/message"); len(got) != 4 || got[0].Info.SessionID != "ses_branch" || got[0].Info.ID == parentMessages[0].Info.ID {
			t.Errorf("the fork's messages: %+v", got)
		}
	})
	t.Run("the same fork again is a replay; another messageID is a conflict naming it", func(t *testing.T) {
		resp, fork := post(t, ts.URL+"/session/ses_parent/fork", `{"id":"ses_branch"}`)
		if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" || fork["id"] != "ses_branch" {
			t.Fatalf("replay: %d %v", resp.StatusCode, fork)
		}
		resp, body := post(t, ts.URL+"/session/ses_parent/fork", `{"id":"ses_branch","messageID":"`+parentMessages[2].Info.ID+`"}`)
		data, _ := body["data"].(map[string]any)
		if resp.StatusCode != 409 || !strings.Contains(data["message"].(string), "messageID") {
			t.Fatalf("conflict: %d %v", resp.StatusCode, body)
		}
	})
	t.Run("a fork at a message copies the messages before it", func(t *testing.T) {
		resp, _ := post(t, ts.URL+"/session/ses_parent/fork", `{"id":"ses_early","messageID":"`+parentMessages[2].Info.ID+`"}`)
		if resp.StatusCode != 200 {
			t.Fatalf("fork: %d", resp.StatusCode)
		}
		if got := messagesOf(t, ts.URL+"/session/ses_early/message"); len(got) != 2 {
			t.Errorf("the fork has %d messages, want the 2 before the message", len(got))
		}
	})
	t.Run("a bad id is 400, an unknown parent 404, and a fork of a fork counts on", func(t *testing.T) {
		if resp, _ := post(t, ts.URL+"/session/ses_parent/fork", `{"id":"ses_../x"}`); resp.StatusCode != 400 {
			t.Errorf("bad id: %d", resp.StatusCode)
		}
		if resp, _ := post(t, ts.URL+"/session/ses_nobody/fork", `{"id":"ses_orphan"}`); resp.StatusCode != 404 {
			t.Errorf("unknown parent: %d", resp.StatusCode)
		}
		if resp, fork := post(t, ts.URL+"/session/ses_branch/fork", ``); resp.StatusCode != 200 || fork["title"] != "p (fork #2)" || !strings.HasPrefix(fork["id"].(string), "ses_") {
			t.Errorf("a fork of a fork without an id: %d %v", resp.StatusCode, fork)
		}
	})
}
