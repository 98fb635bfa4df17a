package idempotency

import (
	"net/http/httptest"
	"testing"
)

func TestTheKeyAppliesToThePromptRoutesOnly(t *testing.T) {
	p := &Prompts{config: &Config{}}
	for _, tt := range []struct {
		method, path, key string
		session, route    string // "" when the key does not apply
	}{
		{"POST", "/session/ses_a/prompt_async", "k", "ses_a", "prompt_async"},
		{"POST", "/session/ses_a/message", "k", "ses_a", "message"},
		{"POST", "/session/ses_a/command", "k", "ses_a", "command"},
		{"POST", "/session/ses_a/shell", "k", "ses_a", "shell"},
		{"POST", "/api/session/ses_a/prompt", "k", "ses_a", "prompt"},
		{"POST", "/session/ses_a/prompt_async", "", "", ""}, // no key: untouched
		{"GET", "/session/ses_a/message", "k", "", ""},      // a read
		{"POST", "/session/ses_a/fork", "k", "", ""},        // not a prompt
		{"POST", "/api/session/ses_a/message", "k", "", ""}, // not a v2 prompt route
		{"POST", "/session//prompt_async", "k", "", ""},     // no session
		{"POST", "/experimental/session/ses_a/shell", "k", "", ""},
	} {
		r := httptest.NewRequest(tt.method, tt.path, nil)
		if tt.key != "" {
			r.Header.Set(KeyHeader, tt.key)
		}
		session, route, ok := p.Keyed(r)
		if ok != (tt.route != "") || session != tt.session || route.name != tt.route {
			t.Errorf("%s %s key %q: %q %q %v, want %q %q", tt.method, tt.path, tt.key, session, route.name, ok, tt.session, tt.route)
		}
	}
	off := &Prompts{config: &Config{Off: true}}
	r := httptest.NewRequest("POST", "/session/ses_a/prompt_async", nil)
	r.Header.Set(KeyHeader, "k")
	if _, _, ok := off.Keyed(r); ok {
		t.Error("idempotency off still takes keyed prompts")
	}
}
