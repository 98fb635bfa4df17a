package move

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sessionid/caddy-sessionid/nativeserver"
)

// The native server's sync routes are compatible with a move: a session
// copied between two of them arrives with its id, messages, child and
// fields, and what reached it after the copy catches up.
func TestAMoveBetweenNativeServers(t *testing.T) {
	worker := func(directory string) string {
		s, err := nativeserver.New(nativeserver.Config{DataDir: t.TempDir(), Directory: directory})
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(s)
		t.Cleanup(ts.Close)
		return strings.TrimPrefix(ts.URL, "http://")
	}
	from, to := worker("/work/a"), worker("/work/b")
	ws := Workers{}
	ctx := context.Background()
	send := func(worker, method, path, body string) string {
		t.Helper()
		status, raw, err := ws.Do(ctx, worker, method, path, nil, []byte(body))
		if err != nil || status != 200 {
			t.Fatalf("%s %s on %s: %d %s %v", method, path, worker, status, raw, err)
		}
		return string(raw)
	}
	send(from, "POST", "/session", `{"id":"ses_moving","title":"moving","metadata":{"k":"v"}}`)
	send(from, "POST", "/session", `{"id":"ses_moving_child","parentID":"ses_moving"}`)
	send(from, "POST", "/session/ses_moving/message", `{"parts":[{"type":"text","text":"first"}]}`)

	c := Copy{Session: "ses_moving", From: from, To: to}
	copied, err := ws.Run(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(copied.Sessions, ",") != "ses_moving,ses_moving_child" || copied.Messages != 2 {
		t.Fatalf("copied %+v", copied)
	}
	var session nativeserver.Session
	_ = json.Unmarshal([]byte(send(to, "GET", "/session/ses_moving", "")), &session)
	if session.Title != "moving" || session.Directory != "/work/b" || string(session.Metadata) != `{"k":"v"}` {
		t.Fatalf("the copy: %+v", session)
	}
	// The copy keeps the fields a duplicate create is compared on.
	if status, raw, _ := ws.Do(ctx, to, "POST", "/session", nil, []byte(`{"id":"ses_moving","title":"other"}`)); status != http.StatusConflict {
		t.Fatalf("a create of the id with other fields on the target: %d %s", status, raw)
	}
	if changed, err := ws.Changed(ctx, from, copied.Positions); err != nil || changed {
		t.Fatalf("nothing reached the source, yet changed=%v (%v)", changed, err)
	}

	send(from, "POST", "/session/ses_moving/message", `{"parts":[{"type":"text","text":"second"}]}`)
	if changed, _ := ws.Changed(ctx, from, copied.Positions); !changed {
		t.Fatal("a prompt on the source after the copy is not seen")
	}
	events, err := ws.CatchUp(ctx, c, &copied)
	if err != nil || events == 0 || copied.Messages != 4 {
		t.Fatalf("catch up: %d events, %d messages, %v", events, copied.Messages, err)
	}
	if events, err := ws.CatchUp(ctx, c, &copied); err != nil || events != 0 {
		t.Fatalf("a second catch up copied %d events (%v)", events, err)
	}
	messages := send(to, "GET", "/session/ses_moving/message", "")
	if !strings.Contains(messages, `"first"`) || !strings.Contains(messages, `"second"`) {
		t.Fatalf("the target's messages: %s", messages)
	}
}

// A worker whose OpenAPI document lacks the sync routes (as servers without
// them, and opencode's web UI answering unknown paths, do) cannot move, and
// says which version it is.
func TestAWorkerWithoutTheSyncRoutesCannotMove(t *testing.T) {
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/doc":
			_, _ = w.Write([]byte(`{"openapi":"3.1.0","info":{"version":"0.9.1"},"paths":{"/session":{"post":{}}}}`))
		case "/global/health":
			_, _ = w.Write([]byte(`{"healthy":true,"version":"0.9.1"}`))
		default:
			_, _ = w.Write([]byte(`<html>web UI</html>`))
		}
	}))
	defer old.Close()
	err := Workers{}.CanMove(context.Background(), strings.TrimPrefix(old.URL, "http://"))
	if !errors.Is(err, ErrCannotMove) || !strings.Contains(err.Error(), "0.9.1") {
		t.Fatalf("CanMove: %v", err)
	}
}
