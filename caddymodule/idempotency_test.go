package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/openapi"
)

// promptUpstream is an opencode-shaped upstream for the prompt routes: it
// keeps the user messages it was sent by id, counts prompts, answers
// prompt_async 204 and /message with an assistant reply, and answers
// GET /session/{id}/message/{messageID} like opencode.
type promptUpstream struct {
	mu       sync.Mutex
	prompts  int
	messages map[string]string // message id → the body it was sent with
	delay    time.Duration     // how long a prompt takes
	status   int               // when set, every prompt is answered with it
}

func newPromptUpstream() *promptUpstream { return &promptUpstream{messages: map[string]string{}} }

func (u *promptUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, _ := strings.CutPrefix(r.URL.Path, "/session/"+realID+"/")
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case r.Method == "GET" && strings.HasPrefix(rest, "message/"):
		id := strings.TrimPrefix(rest, "message/")
		if _, ok := u.messages[id]; !ok {
			w.WriteHeader(404)
			io.WriteString(w, `{"name":"NotFoundError","data":{"message":"Message not found: `+id+`"}}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"info":{"id":%q,"sessionID":%q,"role":"user"},"parts":[]}`, id, realID)
	case r.Method == "POST" && (rest == "prompt_async" || rest == "message"):
		var in struct{ MessageID string }
		json.Unmarshal(body, &in)
		u.prompts++
		if u.status != 0 {
			w.WriteHeader(u.status)
			return
		}
		u.mu.Unlock()
		time.Sleep(u.delay)
		u.mu.Lock()
		if in.MessageID != "" {
			u.messages[in.MessageID] = string(body)
		}
		if rest == "prompt_async" {
			w.WriteHeader(204)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"info":{"id":"msg_reply%d","sessionID":%q,"role":"assistant","parentID":%q},"parts":[]}`, u.prompts, realID, in.MessageID)
	default:
		w.WriteHeader(404)
	}
}

func (u *promptUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.prompts
}

func newKeyedProxy(t *testing.T, u *promptUpstream, c idempotency.Config) (*Handler, string) {
	t.Helper()
	h, front := newProxy(t, u)
	h.MaxBodySize = 1 << 20
	if c.TTL == 0 {
		c.TTL = caddy.Duration(time.Hour)
	}
	if c.Wait == 0 {
		c.Wait = caddy.Duration(5 * time.Second)
	}
	h.Idempotency = &c
	h.Mode = ModeMapping
	setUp(t, h, h.index)
	return h, front.URL
}

// prompt sends a prompt with an Idempotency-Key (none when key is "").
func prompt(t *testing.T, url, route, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/session/"+clientID+"/"+route, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(idempotency.KeyHeader, key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

const hello = `{"parts":[{"type":"text","text":"hello"}]}`

func TestASecondPromptWithTheSameKeyIsAReplayTheUpstreamNeverSees(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	first, _ := prompt(t, url, "prompt_async", "k1", hello)
	second, _ := prompt(t, url, "prompt_async", "k1", `{ "parts" : [ {"text":"hello", "type":"text"} ] }`)
	if first.StatusCode != 204 || first.Header.Get(ReplayHeader) != "" {
		t.Fatalf("first: %d replayed=%q", first.StatusCode, first.Header.Get(ReplayHeader))
	}
	if second.StatusCode != 204 || second.Header.Get(ReplayHeader) != "true" {
		t.Fatalf("retry: %d replayed=%q", second.StatusCode, second.Header.Get(ReplayHeader))
	}
	if n := u.count(); n != 1 {
		t.Fatalf("the upstream was prompted %d times", n)
	}
	for id, body := range u.messages {
		if !strings.HasPrefix(id, "msg_") || len(id) != 30 || !strings.Contains(body, `"messageID":"`+id+`"`) {
			t.Fatalf("the prompt went up as %s with %s", id, body)
		}
	}
}

func TestTheReplayOfMessageIsTheSameAssistantMessageUnderTheClientsID(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	_, first := prompt(t, url, "message", "k", hello)
	resp, again := prompt(t, url, "message", "k", hello)
	if string(first) != string(again) || resp.Header.Get(ReplayHeader) != "true" {
		t.Fatalf("first %s, replay %s (replayed=%q)", first, again, resp.Header.Get(ReplayHeader))
	}
	if strings.Contains(string(again), realID) || !strings.Contains(string(again), clientID) {
		t.Fatalf("the replay carries the wrong session id: %s", again)
	}
	if u.count() != 1 {
		t.Fatalf("%d prompts upstream", u.count())
	}
}

func TestAKeyReusedWithAnotherRequestIs422NamingWhatDiffers(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	prompt(t, url, "prompt_async", "k", hello)
	tests := []struct{ name, route, body, differ string }{
		{"other parts", "prompt_async", `{"parts":[{"type":"text","text":"bye"}]}`, "body.parts"},
		{"an added field", "prompt_async", `{"parts":[{"type":"text","text":"hello"}],"agent":"plan"}`, "body.agent"},
		{"another route", "message", hello, "route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, raw := prompt(t, url, tt.route, "k", tt.body)
			var e struct {
				Name string
				Data struct{ Fields []string }
			}
			json.Unmarshal(raw, &e)
			if resp.StatusCode != 422 || e.Name != "IdempotencyKeyMismatchError" || strings.Join(e.Data.Fields, ",") != tt.differ {
				t.Fatalf("%d %s", resp.StatusCode, raw)
			}
		})
	}
	if u.count() != 1 {
		t.Fatalf("%d prompts upstream", u.count())
	}
}

func TestDifferentKeysAreDifferentPrompts(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	for _, key := range []string{"a", "b", `"c"`} {
		if resp, raw := prompt(t, url, "prompt_async", key, hello); resp.StatusCode != 204 {
			t.Fatalf("%s: %d %s", key, resp.StatusCode, raw)
		}
	}
	if resp, _ := prompt(t, url, "prompt_async", "c", hello); resp.Header.Get(ReplayHeader) != "true" {
		t.Fatal(`the key "c" in the IETF draft's quoted form and c bare are not the same key`)
	}
	if u.count() != 3 {
		t.Fatalf("%d prompts upstream, want 3", u.count())
	}
}

func TestWithoutTheHeaderNothingChanges(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	prompt(t, url, "prompt_async", "", hello)
	prompt(t, url, "prompt_async", "", hello)
	if u.count() != 2 || len(u.messages) != 0 {
		t.Fatalf("%d prompts, message ids %v: an unkeyed prompt was changed", u.count(), u.messages)
	}
}

func TestBadKeysAre400BeforeAnythingIsRecorded(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	tests := []struct{ name, key, rule string }{
		{"too long", strings.Repeat("k", idmap.MaxKeyLen+1), idmap.KeyRuleLength},
		{"empty quoted", `""`, idmap.KeyRuleLength},
		{"a space", "a b", idmap.KeyRuleCharset},
		{"non-ASCII", "clé", idmap.KeyRuleCharset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, raw := prompt(t, url, "prompt_async", tt.key, hello)
			var e struct{ Data struct{ Field, Rule string } }
			json.Unmarshal(raw, &e)
			if resp.StatusCode != 400 || e.Data.Field != idempotency.KeyHeader || e.Data.Rule != tt.rule {
				t.Fatalf("%d %s", resp.StatusCode, raw)
			}
		})
	}
	if u.count() != 0 {
		t.Fatalf("%d prompts upstream", u.count())
	}
}

func TestConcurrentRetriesOfOneKeyPromptOnce(t *testing.T) {
	u := newPromptUpstream()
	u.delay = 50 * time.Millisecond
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	var wg sync.WaitGroup
	statuses := make(chan int, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", url+"/session/"+clientID+"/prompt_async", strings.NewReader(hello))
			req.Header.Set(idempotency.KeyHeader, "same")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 204 {
			t.Errorf("a retry got %d", s)
		}
	}
	if u.count() != 1 {
		t.Fatalf("%d prompts upstream", u.count())
	}
}

func TestARetryThatWaitsTooLongIs409WithRetryAfter(t *testing.T) {
	u := newPromptUpstream()
	u.delay = 500 * time.Millisecond
	_, url := newKeyedProxy(t, u, idempotency.Config{Wait: caddy.Duration(50 * time.Millisecond)})
	go func() {
		req, _ := http.NewRequest("POST", url+"/session/"+clientID+"/message", strings.NewReader(hello))
		req.Header.Set(idempotency.KeyHeader, "slow")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	resp, raw := prompt(t, url, "message", "slow", hello)
	if resp.StatusCode != 409 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d %s", resp.StatusCode, raw)
	}
	time.Sleep(600 * time.Millisecond)
	if resp, _ := prompt(t, url, "message", "slow", hello); resp.Header.Get(ReplayHeader) != "true" || u.count() != 1 {
		t.Fatalf("after the first finished: %d replayed=%q, %d prompts", resp.StatusCode, resp.Header.Get(ReplayHeader), u.count())
	}
}

func TestARefusedPromptRecordsNothing(t *testing.T) {
	u := newPromptUpstream()
	u.status = 400
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	prompt(t, url, "prompt_async", "k", hello)
	u.status = 0
	if resp, _ := prompt(t, url, "prompt_async", "k", hello); resp.StatusCode != 204 || resp.Header.Get(ReplayHeader) != "" || u.count() != 2 {
		t.Fatalf("the fixed retry: %d replayed=%q, %d prompts", resp.StatusCode, resp.Header.Get(ReplayHeader), u.count())
	}
}

// pending stores the record an attempt leaves when the process stops
// between sending a prompt and recording its answer.
func pending(t *testing.T, h *Handler, key, body string, started time.Time) idmap.Prompt {
	t.Helper()
	print, _ := idmap.NewFingerprint("prompt_async", "", []byte(body))
	anonymous, err := h.gate.Name(httptest.NewRequest("POST", "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	rec := idmap.Prompt{SessionID: clientID, Caller: anonymous.ID, Key: key, Fingerprint: print, MessageID: idmap.NewMessageID(started, clientID, key),
		Started: started, Expires: started.Add(time.Hour)}
	if err := h.index.Store.SavePrompt(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestAnInterruptedPromptThatReachedTheUpstreamIsNotSentAgain(t *testing.T) {
	u := newPromptUpstream()
	h, url := newKeyedProxy(t, u, idempotency.Config{})
	rec := pending(t, h, "k", hello, time.Now())
	u.messages[rec.MessageID] = hello // it arrived
	resp, raw := prompt(t, url, "prompt_async", "k", hello)
	if resp.StatusCode != 204 || u.count() != 0 {
		t.Fatalf("%d %s, %d prompts", resp.StatusCode, raw, u.count())
	}
	if resp, _ := prompt(t, url, "prompt_async", "k", hello); resp.Header.Get(ReplayHeader) != "true" {
		t.Fatal("the recovered answer was not recorded")
	}
}

func TestAnInterruptedPromptThatNeverArrivedIsSentOnceUnderItsID(t *testing.T) {
	u := newPromptUpstream()
	h, url := newKeyedProxy(t, u, idempotency.Config{})
	recent := pending(t, h, "recent", hello, time.Now())
	if resp, raw := prompt(t, url, "prompt_async", "recent", hello); resp.StatusCode != 409 || u.count() != 0 {
		t.Fatalf("within the settle time: %d %s, %d prompts", resp.StatusCode, raw, u.count())
	}
	old := pending(t, h, "old", hello, time.Now().Add(-idempotency.Settle))
	if resp, raw := prompt(t, url, "prompt_async", "old", hello); resp.StatusCode != 204 || u.count() != 1 {
		t.Fatalf("after it: %d %s, %d prompts", resp.StatusCode, raw, u.count())
	}
	if _, ok := u.messages[old.MessageID]; !ok {
		t.Fatalf("sent under another id than the recorded %s: %v", old.MessageID, u.messages)
	}
	_ = recent
}

func TestAClientMessageIDThatExistsIsNeverSentAgain(t *testing.T) {
	u := newPromptUpstream()
	_, url := newKeyedProxy(t, u, idempotency.Config{})
	u.messages["msg_taken"] = hello
	resp, raw := prompt(t, url, "prompt_async", "k", `{"messageID":"msg_taken","parts":[]}`)
	if resp.StatusCode != 409 || u.count() != 0 {
		t.Fatalf("%d %s, %d prompts", resp.StatusCode, raw, u.count())
	}
}

func TestConfirmAnswersOnlyOnceTheMessageIsVisible(t *testing.T) {
	u := newPromptUpstream()
	u.status = 204 // accepted, then lost: the upstream bug confirm is for
	_, url := newKeyedProxy(t, u, idempotency.Config{Confirm: caddy.Duration(100 * time.Millisecond)})
	if resp, raw := prompt(t, url, "prompt_async", "k", hello); resp.StatusCode != 504 {
		t.Fatalf("a lost prompt: %d %s", resp.StatusCode, raw)
	}
	u.status = 0
	time.Sleep(idempotency.Settle)
	if resp, raw := prompt(t, url, "prompt_async", "k", hello); resp.StatusCode != 204 || u.count() != 2 {
		t.Fatalf("its retry: %d %s, %d prompts", resp.StatusCode, raw, u.count())
	}
}

func TestRecordsOfADeletedSessionAreNotReplayedOnItsSuccessor(t *testing.T) {
	u := newPromptUpstream()
	h, url := newKeyedProxy(t, u, idempotency.Config{})
	prompt(t, url, "prompt_async", "k", hello)
	ctx := context.Background()
	m, _ := h.index.Store.Load(ctx, clientID)
	h.index.Remove(ctx, m)
	m.Created = time.Now()
	h.index.Save(ctx, m)
	if resp, _ := prompt(t, url, "prompt_async", "k", hello); resp.Header.Get(ReplayHeader) != "" || u.count() != 2 {
		t.Fatalf("replayed=%q, %d prompts", resp.Header.Get(ReplayHeader), u.count())
	}
}

func TestTheIdempotencyCaddyfileOption(t *testing.T) {
	tests := []struct {
		name, input string
		want        idempotency.Config
		err         string
	}{
		{"block", "session_ids {\n idempotency {\n ttl 1h\n wait 2s\n confirm 3s\n }\n}",
			idempotency.Config{TTL: caddy.Duration(time.Hour), Wait: caddy.Duration(2 * time.Second), Confirm: caddy.Duration(3 * time.Second)}, ""},
		{"off", "session_ids {\n idempotency off\n}", idempotency.Config{Off: true}, ""},
		{"bad word", "session_ids {\n idempotency maybe\n}", idempotency.Config{}, `bad idempotency "maybe"`},
		{"unknown", "session_ids {\n idempotency {\n retries 3\n }\n}", idempotency.Config{}, `unknown idempotency option "retries"`},
		{"bad duration", "session_ids {\n idempotency {\n ttl soon\n }\n}", idempotency.Config{}, `bad idempotency ttl "soon"`},
		{"zero ttl", "session_ids {\n idempotency {\n ttl 0s\n }\n}", idempotency.Config{}, `records must be kept`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := new(Handler)
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || *h.Idempotency != tt.want {
				t.Fatalf("%+v, %v", h.Idempotency, err)
			}
		})
	}
}

func TestTheOpenAPIDocumentDeclaresTheKeyOnThePromptRoutes(t *testing.T) {
	h := &Handler{Idempotency: &idempotency.Config{TTL: caddy.Duration(time.Hour)}}
	doc := map[string]any{"paths": map[string]any{
		"/session/{sessionID}/prompt_async": map[string]any{"post": map[string]any{"responses": map[string]any{"204": map[string]any{}}}},
		"/session/{sessionID}/shell": map[string]any{"post": map[string]any{"responses": map[string]any{"200": map[string]any{},
			"409": openapi.JSONResponse("busy", map[string]any{"$ref": "#/components/schemas/SessionBusyError"})}}},
		"/session/{sessionID}/todo": map[string]any{"get": map[string]any{}},
	}}
	h.augment(doc)
	raw, _ := json.Marshal(doc)
	var got struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name, In string }
			Responses  map[string]struct {
				Headers map[string]any
				Content map[string]struct{ Schema map[string]any }
			}
		}
	}
	json.Unmarshal(raw, &got)
	for _, route := range []string{"/session/{sessionID}/prompt_async", "/session/{sessionID}/shell"} {
		op := got.Paths[route]["post"]
		if len(op.Parameters) != 1 || op.Parameters[0].Name != idempotency.KeyHeader || op.Parameters[0].In != "header" {
			t.Fatalf("%s parameters: %+v", route, op.Parameters)
		}
		if _, ok := op.Responses["422"]; !ok {
			t.Fatalf("%s has no 422", route)
		}
		if _, ok := op.Responses["409"]; !ok {
			t.Fatalf("%s has no 409", route)
		}
	}
	if got.Paths["/session/{sessionID}/prompt_async"]["post"].Responses["204"].Headers[ReplayHeader] == nil {
		t.Fatal("prompt_async's 204 lacks the replay header")
	}
	if busy := got.Paths["/session/{sessionID}/shell"]["post"].Responses["409"].Content["application/json"].Schema["anyOf"]; busy == nil {
		t.Fatal("shell's own 409 (session busy) was replaced instead of kept beside the in-progress one")
	}
}
