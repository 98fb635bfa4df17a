package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// ModelReply is what the fake model answers to every prompt.
const ModelReply = "Hello from the fake model."

// fakeModel is an OpenAI-compatible chat-completions server, the only fake in
// these tests: opencode's built-in @ai-sdk/openai-compatible provider points
// at it. opencode only makes streaming calls, so it answers every call with a
// short stream of chunks.
type fakeModel struct {
	*httptest.Server
	calls atomic.Int64
	// agentCalls counts the calls of the agent loop (they offer tools),
	// leaving out title generation: one per prompt that gets a reply.
	agentCalls atomic.Int64
	// lastAgentBody is the body of the last agent call: what the model was
	// told, the session's earlier turns among it.
	lastAgentBody atomic.Value // string
}

func startFakeModel(tb testing.TB) *fakeModel {
	tb.Helper()
	m := &fakeModel{}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	tb.Cleanup(m.Close)
	return m
}

func (m *fakeModel) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" {
		http.NotFound(w, r)
		return
	}
	m.calls.Add(1)
	if body, _ := io.ReadAll(r.Body); bytes.Contains(body, []byte(`"tools"`)) {
		m.lastAgentBody.Store(string(body))
		m.agentCalls.Add(1)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	chunk := func(delta map[string]any, finish any) {
		b, _ := json.Marshal(map[string]any{
			"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "mock-1",
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}},
		})
		fmt.Fprintf(w, "data: %s\n\n", b)
		w.(http.Flusher).Flush()
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	for _, word := range []string{"Hello ", "from ", "the ", "fake ", "model."} {
		chunk(map[string]any{"content": word}, nil)
	}
	chunk(map[string]any{}, "stop")
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// opencodeConfig points opencode at the fake model.
func (m *fakeModel) opencodeConfig() []byte {
	b, _ := json.Marshal(map[string]any{
		"$schema":     "https://opencode.ai/config.json",
		"model":       "mock/mock-1",
		"small_model": "mock/mock-1",
		"provider": map[string]any{"mock": map[string]any{
			"npm":     "@ai-sdk/openai-compatible",
			"name":    "Mock LLM",
			"options": map[string]any{"baseURL": m.URL + "/v1", "apiKey": "dummy"},
			"models":  map[string]any{"mock-1": map[string]any{"name": "Mock 1"}},
		}},
	})
	return b
}
