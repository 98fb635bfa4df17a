package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/internal/jstools"
)

// relay is a TCP relay in front of an address whose connections the test
// can break, as a network blip or a load balancer's idle timeout does.
type relay struct {
	net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func startRelay(tb testing.TB, target string) *relay {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &relay{Listener: l, target: target}
	tb.Cleanup(func() { l.Close(); r.breakAll() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

// breakAll cuts every connection through the relay.
func (r *relay) breakAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// TestTheSDKsEventStreamResumesByItself: opencode's official SDK sends
// Last-Event-ID when it reconnects, so a client whose connection breaks
// mid-prompt gets, through the module, exactly the events it would have got
// without the break.
func TestTheSDKsEventStreamResumesByItself(t *testing.T) {
	tools := jstools.Ensure(t)
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc)
	oc.waitHealthy(t)
	blip := startRelay(t, strings.TrimPrefix(proxy.URL, "http://"))
	steady := openEvents(t, proxy.URL+"/event", "")
	steady.next(t)

	clientID := fmt.Sprintf("ses_sdk_resume_%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(tools, "sdk-events-resume.mjs"), "http://"+blip.Addr().String(), clientID)
	stderr, _ := cmd.StderrPipe()
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(stderr).ReadString('\n'); !strings.Contains(line, "subscribed") {
		t.Fatalf("the SDK script did not subscribe: %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()

	createSession(t, proxy.URL, clientID)
	promptAsync(t, proxy.URL, clientID, "hello")
	steadyAll := steady.until(t, 60*time.Second, func(ev sse) bool {
		return strings.Contains(ev.data, `"type":"session.status"`) && strings.Contains(ev.data, clientID)
	})
	blip.breakAll() // mid-prompt
	steadyAll = append(steadyAll, steady.until(t, 120*time.Second, idleOf(clientID))...)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("SDK script: %v\n%s", err, stdout.String())
	}
	var got struct {
		Events []json.RawMessage
		Errors int
	}
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if got.Errors < 1 {
		t.Fatal("the SDK's connection never broke: the test proves nothing")
	}
	// The session's events, as each client saw them: from its creation on,
	// without greetings and heartbeats (each connection has its own).
	ofSession := func(datas []string) []string {
		var out []string
		started := false
		for _, d := range datas {
			started = started || strings.Contains(d, `"type":"session.created"`) && strings.Contains(d, clientID)
			if started && !strings.Contains(d, `"type":"server.connected"`) && !strings.Contains(d, `"type":"server.heartbeat"`) {
				out = append(out, d)
			}
		}
		return out
	}
	var sdkDatas, steadyDatas []string
	for _, e := range got.Events {
		var v any
		_ = json.Unmarshal(e, &v)
		canonical, _ := json.Marshal(v)
		sdkDatas = append(sdkDatas, string(canonical))
	}
	for _, ev := range steadyAll {
		var v any
		_ = json.Unmarshal([]byte(ev.data), &v)
		canonical, _ := json.Marshal(v)
		steadyDatas = append(steadyDatas, string(canonical))
	}
	sdkSeen, steadySeen := ofSession(sdkDatas), ofSession(steadyDatas)
	if len(sdkSeen) < 5 || strings.Join(sdkSeen, "\n") != strings.Join(steadySeen, "\n") {
		t.Fatalf("across the break the SDK yielded %d events of the session, a client without a break %d:\nSDK:\n%s\nsteady:\n%s",
			len(sdkSeen), len(steadySeen), strings.Join(sdkSeen, "\n"), strings.Join(steadySeen, "\n"))
	}
	t.Logf("the SDK's connection broke %d time(s) mid-prompt; it yielded all %d events of the session, in order", got.Errors, len(sdkSeen))
}
