package caddymodule

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzSessionPathRewrite checks path rewriting on arbitrary request URIs: the
// escaped path always decodes to the path, only a mapped session segment
// changes, and everything else is kept byte for byte.
func FuzzSessionPathRewrite(f *testing.F) {
	for _, seed := range []string{
		"/session/ses_client/message", "/api/session/ses_client", "/session/ses_client%2Fx/message",
		"/session/ses_other/message", "/session//x", "/sessions/ses_client", "/session/ses_client/a%20b?x=ses_client",
		"/api/session/ses_clientx/event", "/x/session/ses_client",
	} {
		f.Add(seed)
	}
	resolve := func(id string) (string, bool, error) {
		if id == "ses_client" {
			return "ses_df56f5ae4ffeUEKLWgxQCa70jN", true, nil
		}
		return "", false, nil
	}
	f.Fuzz(func(t *testing.T, uri string) {
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return
		}
		before := *u
		if err := rewriteSessionPath(u, resolve); err != nil {
			t.Fatal(err)
		}
		if decoded, err := url.PathUnescape(u.EscapedPath()); err != nil || decoded != u.Path {
			t.Fatalf("%q: escaped path %q does not decode to path %q", uri, u.EscapedPath(), u.Path)
		}
		if u.RawQuery != before.RawQuery {
			t.Fatalf("%q: query changed", uri)
		}
		start, end, ok := sessionSegment(before.Path)
		if !ok || before.Path[start:end] != "ses_client" {
			if u.Path != before.Path || u.EscapedPath() != before.EscapedPath() {
				t.Fatalf("%q: an unmapped path changed to %q", uri, u.EscapedPath())
			}
			return
		}
		want := before.Path[:start] + "ses_df56f5ae4ffeUEKLWgxQCa70jN" + before.Path[end:]
		if u.Path != want {
			t.Fatalf("%q: path %q, want %q", uri, u.Path, want)
		}
		if strings.Contains(u.EscapedPath(), "ses_client") && strings.Count(before.EscapedPath(), "ses_client") == 1 {
			t.Fatalf("%q: escaped path still names the client id: %q", uri, u.EscapedPath())
		}
	})
}
