package nativeserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func newTestServer(t *testing.T, dir string) *httptest.Server {
	t.Helper()
	s, err := New(Config{DataDir: dir, Directory: "/project"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return ts
}

func post(t *testing.T, url, body string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp, out
}

func TestConcurrentCreatesOfOneIDMakeOneSession(t *testing.T) {
	ts := newTestServer(t, t.TempDir())
	var wg sync.WaitGroup
	created := make([]any, 40)
	for i := range created {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, s := post(t, ts.URL+"/session", `{"id":"ses_once","title":"t"}`)
			if resp.StatusCode != 200 {
				t.Errorf("status %d", resp.StatusCode)
			}
			created[i] = s["time"].(map[string]any)["created"]
		}()
	}
	wg.Wait()
	for _, c := range created {
		if c != created[0] {
			t.Fatalf("two sessions for one id: created %v and %v", c, created[0])
		}
	}
}

func TestSessionsAndMessagesSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, dir)
	post(t, first.URL+"/session", `{"id":"ses_kept","title":"kept"}`)
	resp, _ := http.Post(first.URL+"/session/ses_kept/message", "application/json", strings.NewReader(`{"parts":[{"type":"text","text":"hi"}]}`))
	resp.Body.Close()
	first.Close()

	second := newTestServer(t, dir)
	r, err := http.Get(second.URL + "/session/ses_kept/message")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var messages []Message
	json.NewDecoder(r.Body).Decode(&messages)
	if len(messages) != 2 || messages[1].Parts[0].Text != Reply("hi") {
		t.Fatalf("after restart: %+v", messages)
	}
}

func TestOpenAPIDeclaresChosenIDsAndConflicts(t *testing.T) {
	ts := newTestServer(t, t.TempDir())
	r, err := http.Get(ts.URL + "/doc")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var doc struct {
		OpenAPI string `json:"openapi"`
		Paths   map[string]map[string]struct {
			RequestBody struct {
				Content map[string]struct {
					Schema struct {
						Properties map[string]struct {
							Pattern string `json:"pattern"`
						} `json:"properties"`
					} `json:"schema"`
				} `json:"content"`
			} `json:"requestBody"`
			Responses map[string]any `json:"responses"`
		} `json:"paths"`
	}
	if err := json.NewDecoder(r.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	create := doc.Paths["/session"]["post"]
	if doc.OpenAPI != "3.1.0" || create.RequestBody.Content["application/json"].Schema.Properties["id"].Pattern != IDPattern || create.Responses["409"] == nil {
		t.Fatalf("POST /session lacks id or 409: %+v", create)
	}
	if fork := doc.Paths["/session/{sessionID}/fork"]["post"]; fork.RequestBody.Content["application/json"].Schema.Properties["id"].Pattern != IDPattern || fork.Responses["409"] == nil {
		t.Fatalf("POST /session/{sessionID}/fork lacks id or 409: %+v", fork)
	}
	// Every route the server serves is in the document, and nothing else.
	want := []string{"/global/health", "/doc", "/event", "/session", "/session/{sessionID}", "/session/{sessionID}/children",
		"/session/{sessionID}/fork", "/session/{sessionID}/message", "/session/{sessionID}/prompt_async",
		"/session/status", "/sync/history", "/sync/replay", "/path", "/project/current"}
	if len(doc.Paths) != len(want) {
		t.Fatalf("%d paths documented, want %d", len(doc.Paths), len(want))
	}
	for _, p := range want {
		if doc.Paths[p] == nil {
			t.Errorf("%s is not documented", p)
		}
	}
}
