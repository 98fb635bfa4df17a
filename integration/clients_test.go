package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/internal/jstools"
)

// TestClients drives the proxy with the clients orchestrators use: code
// generated from its OpenAPI document, opencode's official SDK, the opencode
// CLI, Caddy's metrics and the session-id command of the Caddy binary.
func TestClients(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc, "CREATE_MISSING=true")
	oc.waitHealthy(t)
	tools := jstools.Ensure(t)

	t.Run("the OpenAPI document declares id, 409 and the replay header, and generated clients have id", func(t *testing.T) {
		upstream := call(t, "GET", oc.URL+"/doc", nil, "")
		augmented := call(t, "GET", proxy.URL+"/doc", nil, "")
		var doc struct {
			Paths map[string]map[string]struct {
				Description string `json:"description"`
				RequestBody struct {
					Content map[string]struct {
						Schema struct {
							Properties map[string]struct {
								Pattern string `json:"pattern"`
							} `json:"properties"`
						} `json:"schema"`
					} `json:"content"`
				} `json:"requestBody"`
				Responses map[string]struct {
					Headers map[string]any `json:"headers"`
				} `json:"responses"`
			} `json:"paths"`
		}
		augmented.json(t, &doc)
		create := doc.Paths["/session"]["post"]
		if create.RequestBody.Content["application/json"].Schema.Properties["id"].Pattern == "" {
			t.Fatal("POST /session has no id")
		}
		if _, ok := create.Responses["409"]; !ok || create.Responses["200"].Headers["Idempotent-Replayed"] == nil {
			t.Fatalf("POST /session lacks the 409 or the replay header: %+v", create.Responses)
		}
		fork := doc.Paths["/session/{sessionID}/fork"]["post"]
		if _, conflict := fork.Responses["409"]; fork.RequestBody.Content["application/json"].Schema.Properties["id"].Pattern == "" || !conflict || fork.Responses["200"].Headers["Idempotent-Replayed"] == nil {
			t.Fatalf("POST /session/{sessionID}/fork does not declare the id, its 409 and the replay header: %+v", fork)
		}
		own := doc
		own.Paths = nil
		upstream.json(t, &own)
		if _, ok := own.Paths["/session/{sessionID}/fork"]["post"].RequestBody.Content["application/json"].Schema.Properties["id"]; ok {
			t.Fatal("opencode's own fork declares an id; the check above proves nothing")
		}
		if _, ok := own.Paths["/session/{sessionID}/fork"]["post"].RequestBody.Content["application/json"].Schema.Properties["messageID"]; !ok {
			t.Fatal("opencode's own fork body is not where the test looks")
		}
		if !strings.Contains(doc.Paths["/session/{sessionID}/prompt_async"]["post"].Description, "create_missing") {
			t.Fatal("create_missing is not documented on prompt_async")
		}

		generate := func(spec []byte) string {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "openapi.json"), spec, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(jstools.Bin(tools, "openapi-ts"), "-i", "openapi.json", "-o", "client", "-c", "@hey-api/client-fetch")
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("openapi-ts: %v\n%s", err, out)
			}
			types, err := os.ReadFile(filepath.Join(dir, "client", "types.gen.ts"))
			if err != nil {
				t.Fatal(err)
			}
			block := regexp.MustCompile(`(?s)export type SessionCreateData = \{\n    body\?: \{(.*?)\n    \};`).FindSubmatch(types)
			if block == nil {
				t.Fatalf("no SessionCreateData in the generated types")
			}
			return string(block[1])
		}
		if body := generate(upstream.Body); strings.Contains(body, "\n        id?: string;") {
			t.Fatal("the upstream's own spec already has id; this test proves nothing")
		}
		if body := generate(augmented.Body); !strings.Contains(body, "\n        id?: string;") {
			t.Fatalf("generated SessionCreateData body has no id:%s", body)
		}
	})

	t.Run("the official SDK creates, prompts, reads and watches under the client's ids", func(t *testing.T) {
		v1ID, v2ID := fmt.Sprintf("ses_sdk1_%d", time.Now().UnixNano()), fmt.Sprintf("ses_sdk2_%d", time.Now().UnixNano())
		got := runSDKFlow(t, tools, proxy.URL, v1ID, v2ID)
		real := realID(t, oc, v1ID)
		for _, e := range got.Events {
			if strings.Contains(string(e), real) {
				t.Fatalf("an event carried the real id: %s", e)
			}
		}
	})

	t.Run("opencode run --attach --session with a new id works with create_missing", func(t *testing.T) {
		id := fmt.Sprintf("ses_cli_%d", time.Now().UnixNano())
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, opencodeBin, "run", "--attach", proxy.URL, "--session", id, "hello")
		cmd.Dir, cmd.Env = oc.Dir, append(os.Environ(), oc.Env...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), ModelReply) {
			t.Fatalf("opencode run: %v\n%s", err, out)
		}
		r := call(t, "GET", proxy.URL+"/session/"+id+"/message", nil, "")
		if r.Status != 200 || !strings.Contains(string(r.Body), ModelReply) || !strings.Contains(string(r.Body), `"sessionID":"`+id+`"`) {
			t.Fatalf("messages: %d %s", r.Status, r.Body)
		}
		if n := len(upstreamSessionsOf(t, oc, id)); n != 1 {
			t.Fatalf("%d upstream sessions for the CLI's id", n)
		}
	})

	t.Run("a session deleted through the proxy stays deleted for reads until it is created again", func(t *testing.T) {
		clientID := fmt.Sprintf("ses_deleted_%d", time.Now().UnixNano())
		if r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "to delete"}, ""); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
		if r := call(t, "DELETE", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 200 {
			t.Fatalf("delete: %d %s", r.Status, r.Body)
		}
		before := upstreamSessionCount(t, oc)
		for i := 0; i < 3; i++ { // a client polling after its delete
			if r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 404 {
				t.Fatalf("read %d after the delete, with create_missing on: %d %s, want 404", i, r.Status, r.Body)
			}
			if r := call(t, "GET", proxy.URL+"/session/"+clientID+"/message", nil, ""); r.Status != 404 {
				t.Fatalf("messages %d after the delete: %d %s, want 404", i, r.Status, r.Body)
			}
		}
		if after := upstreamSessionCount(t, oc); after != before {
			t.Fatalf("reads of a deleted id made %d upstream sessions", after-before)
		}
		r := call(t, "POST", proxy.URL+"/session", map[string]any{"id": clientID, "title": "made again"}, "")
		var s session
		r.json(t, &s)
		if r.Status != 200 || s.Title != "made again" || r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("the explicit create after the delete: %d %s", r.Status, r.Body)
		}
		if r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 200 {
			t.Fatalf("a read after it was made again: %d %s", r.Status, r.Body)
		}
		// And when that one is deleted, reads of it are 404 again.
		call(t, "DELETE", proxy.URL+"/session/"+clientID, nil, "")
		if r := call(t, "GET", proxy.URL+"/session/"+clientID, nil, ""); r.Status != 404 {
			t.Fatalf("a read after the second delete: %d", r.Status)
		}
	})

	t.Run("metrics are on Caddy's /metrics", func(t *testing.T) {
		call(t, "POST", proxy.URL+"/session", `{"id":"bad"}`, "")
		var admin string
		for _, kv := range proxy.env {
			if v, ok := strings.CutPrefix(kv, "ADMIN="); ok {
				admin = v
			}
		}
		r := call(t, "GET", "http://"+admin+"/metrics", nil, "")
		for _, series := range []string{
			`caddy_session_ids_creates_total{namespace="default"}`,
			`caddy_session_ids_replays_total{namespace="default"}`,
			`caddy_session_ids_invalid_ids_total{namespace="default"}`,
			`caddy_session_ids_created_missing_total{namespace="default"}`,
			`caddy_session_ids_cache_lookups_total{namespace="default",result="hit"}`,
			`caddy_session_ids_cache_lookups_total{namespace="default",result="miss"}`,
			`caddy_session_ids_storage_seconds_count{namespace="default",op="store"}`,
			`caddy_session_ids_rewritten_bytes_total{direction="response",namespace="default"}`,
			`caddy_session_ids_rewritten_ids_total{direction="response",namespace="default"}`,
		} {
			line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+]+)$`).FindStringSubmatch(string(r.Body))
			if line == nil || line[1] == "0" {
				t.Errorf("%s is missing or zero", series)
			}
		}
	})

	t.Run("caddy session-id derives the documented vectors and validates", func(t *testing.T) {
		out, err := exec.Command(caddyBin, "session-id", "--namespace", "dns:orchestrator.example.com", "worker-1").Output()
		if err != nil || strings.TrimSpace(string(out)) != "ses_37b36516ef552EIRI6L24JT7P3" {
			t.Fatalf("derive: %v %q", err, out)
		}
		out, err = exec.Command(caddyBin, "session-id", "--validate", "ses_ok", "ses_../x").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "rule charset") {
			t.Fatalf("validate: %v %s", err, out)
		}
	})
}

// sdkFlow is what internal/jstools/sdk-flow.mjs saw, driving a proxy with the
// official SDK.
type sdkFlow struct {
	V1Create struct {
		Status    int
		ID, Title string
	}
	V1Replay struct {
		Status   int
		Replayed string
	}
	V2Create struct {
		Status int
		ID     string
	}
	V2Get struct {
		Status int
		ID     string
	}
	Prompt   int
	Messages []struct{ SessionID, Role, Text string }
	Events   []json.RawMessage
	V1Fork   struct {
		Status    int
		ID, Title string
	}
	V1ForkReplay struct {
		Status   int
		Replayed string
	}
	V2Fork struct {
		Status int
		ID     string
	}
	ForkMessages []struct{ SessionID, Role string }
}

// runSDKFlow runs the SDK flow against base and checks what every proxy
// must give it: both creates under the chosen ids, a replay, a prompt
// answered under the v1 id, and events.
func runSDKFlow(t *testing.T, tools, base, v1ID, v2ID string) sdkFlow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(tools, "sdk-flow.mjs"), base, v1ID, v2ID)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sdk flow: %v\n%s", err, out)
	}
	var got sdkFlow
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.V1Create.Status != 200 || got.V1Create.ID != v1ID || got.V1Replay.Replayed != "true" {
		t.Fatalf("v1 create/replay: %+v %+v", got.V1Create, got.V1Replay)
	}
	if got.V2Create.Status != 200 || got.V2Create.ID != v2ID || got.V2Get.ID != v2ID {
		t.Fatalf("v2 create/get: %+v %+v", got.V2Create, got.V2Get)
	}
	if got.Prompt != 204 || len(got.Messages) < 2 || got.Messages[len(got.Messages)-1].Text != ModelReply {
		t.Fatalf("prompt %d, messages %+v", got.Prompt, got.Messages)
	}
	for _, m := range got.Messages {
		if m.SessionID != v1ID {
			t.Fatalf("a message of session %q", m.SessionID)
		}
	}
	if len(got.Events) < 3 {
		t.Fatalf("only %d events", len(got.Events))
	}
	if got.V1Fork.Status != 200 || got.V1Fork.ID != v1ID+"_fork" || got.V1Fork.Title != "sdk v1 (fork #1)" || got.V1ForkReplay.Replayed != "true" {
		t.Fatalf("v1 fork under an id, and again: %+v %+v", got.V1Fork, got.V1ForkReplay)
	}
	if got.V2Fork.Status != 200 || got.V2Fork.ID != v2ID+"_fork" {
		t.Fatalf("v2 fork under an id: %+v", got.V2Fork)
	}
	if len(got.ForkMessages) != len(got.Messages) {
		t.Fatalf("the fork has %d messages, its parent %d", len(got.ForkMessages), len(got.Messages))
	}
	for _, m := range got.ForkMessages {
		if m.SessionID != v1ID+"_fork" {
			t.Fatalf("a message of the fork names session %q", m.SessionID)
		}
	}
	return got
}
