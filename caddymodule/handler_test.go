package caddymodule

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idmap"
)

const (
	clientID = "ses_client"
	realID   = "ses_df56f5ae4ffeUEKLWgxQCa70jN"
)

// echoed is what the echo upstream saw of a request.
type echoed struct {
	Method, Path, RawPath, Query, Body, ContentLength, AcceptEncoding string
}

// newProxy puts a handler, with clientID mapped to realID, in front of
// upstream through httputil.ReverseProxy (standing in for reverse_proxy).
func newProxy(t *testing.T, upstream http.Handler) (*Handler, *httptest.Server) {
	t.Helper()
	back := httptest.NewServer(upstream)
	t.Cleanup(back.Close)
	target, _ := url.Parse(back.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	// Pass bytes as they are, like an upstream that does not compress; Go's
	// default transport would ask for gzip and decode it out of sight.
	rp.Transport = &http.Transport{DisableCompression: true}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		rp.ServeHTTP(w, r)
		return nil
	})

	index, err := idmap.NewIndex(idmap.NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test"), idmap.IndexConfig{NegativeTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	if err := index.Save(context.Background(), idmap.Mapping{ClientID: clientID, RealID: realID}); err != nil {
		t.Fatal(err)
	}
	h := &Handler{MaxBodySize: 1 << 10, MaxBufferSize: 1 << 10, Events: &events.Config{Off: true}}
	setUp(t, h, index)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Caddy's server gives every request its variables.
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
		if err := h.ServeHTTP(w, r, next); err != nil {
			http.Error(w, err.Error(), 500)
		}
	}))
	t.Cleanup(front.Close)
	return h, front
}

// setUp builds h around index as Provision does (without Caddy's context),
// and again after a test changed its configuration.
func setUp(t testing.TB, h *Handler, index *idmap.Index) {
	t.Helper()
	if h.prompts != nil || h.streams != nil {
		_ = h.Cleanup()
	}
	if err := h.setup(index, t.Name()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
}

func echoUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// Plain text: a JSON echo would itself be rewritten on its way back.
		w.Header().Set("Content-Type", "text/plain")
		json.NewEncoder(w).Encode(echoed{r.Method, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, string(body),
			r.Header.Get("Content-Length"), r.Header.Get("Accept-Encoding")})
	})
}

func send(t *testing.T, method, url, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

func TestRequestsReachTheUpstreamWithRealIDs(t *testing.T) {
	_, front := newProxy(t, echoUpstream())
	tests := []struct {
		name, method, path, body string
		want                     echoed
	}{
		{"v1 path", "GET", "/session/" + clientID + "/message", "",
			echoed{Path: "/session/" + realID + "/message"}},
		{"v2 path", "GET", "/api/session/" + clientID + "/event", "",
			echoed{Path: "/api/session/" + realID + "/event"}},
		{"query value", "GET", "/find?sessionID=" + clientID + "&x=ses_other", "",
			echoed{Path: "/find", Query: "sessionID=" + realID + "&x=ses_other"}},
		{"json body", "POST", "/session", `{"parentID":"` + clientID + `","title":"` + clientID + `x"}`,
			echoed{Path: "/session", Body: `{"parentID":"` + realID + `","title":"` + clientID + `x"}`}},
		{"unmapped path untouched", "GET", "/session/ses_unmapped%2Fx/message", "",
			echoed{Path: "/session/ses_unmapped/x/message", RawPath: "/session/ses_unmapped%2Fx/message"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, raw := send(t, tt.method, front.URL+tt.path, "application/json", tt.body)
			var got echoed
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("%v: %s", err, raw)
			}
			if got.Path != tt.want.Path || got.RawPath != tt.want.RawPath || got.Query != tt.want.Query || got.Body != tt.want.Body {
				t.Fatalf("upstream saw %+v, want %+v", got, tt.want)
			}
			if got.Body != "" && got.ContentLength != fmt.Sprint(len(got.Body)) {
				t.Fatalf("Content-Length %s for a %d-byte body", got.ContentLength, len(got.Body))
			}
			if got.AcceptEncoding != "" {
				t.Fatalf("the upstream was asked for %q encoding; rewriting needs identity", got.AcceptEncoding)
			}
		})
	}
}

func TestResponsesReachTheClientWithClientIDs(t *testing.T) {
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(`{"id":"`+realID+`"}`)))
		io.WriteString(w, `{"id":"`+realID+`"}`)
	}))
	resp, raw := send(t, "GET", front.URL+"/session/"+clientID, "", "")
	if string(raw) != `{"id":"`+clientID+`"}` {
		t.Fatalf("response: %s", raw)
	}
	if resp.Header.Get("Content-Length") != fmt.Sprint(len(raw)) {
		t.Fatalf("Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(raw))
	}
}

func TestUnmappedResponsesPassByteForByte(t *testing.T) {
	body := `{"id":"ses_unmapped","weird":"ses_","x":"` + realID + `x"}` + "\n"
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	if _, raw := send(t, "GET", front.URL+"/session", "", ""); string(raw) != body {
		t.Fatalf("got %q, want %q", raw, body)
	}
}

func TestEventStreamsAreRewrittenEventByEvent(t *testing.T) {
	next := make(chan string)
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/event" {
			return // the handler's one look for a fleet (HEAD /global/health)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for event := range next {
			// Each event in two writes, cut inside the id.
			io.WriteString(w, event[:20])
			w.(http.Flusher).Flush()
			io.WriteString(w, event[20:])
			w.(http.Flusher).Flush()
		}
	}))
	resp, err := http.Get(front.URL + "/event")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Length") != "" {
		t.Fatal("an event stream with a Content-Length")
	}
	lines := bufio.NewReader(resp.Body)
	for i := range 3 {
		next <- fmt.Sprintf("data: {\"sessionID\":\"%s\",\"n\":%d}\n\n", realID, i)
		line, err := lines.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("data: {\"sessionID\":\"%s\",\"n\":%d}\n", clientID, i); line != want {
			t.Fatalf("event %d: got %q, want %q", i, line, want)
		}
		lines.ReadString('\n')
	}
	close(next)
}

func TestGzippedResponsesAreDecodedAndRewritten(t *testing.T) {
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		io.WriteString(zw, `{"id":"`+realID+`"}`)
		zw.Close()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", fmt.Sprint(b.Len()))
		w.Write(b.Bytes())
	}))
	resp, raw := send(t, "GET", front.URL+"/session/"+clientID, "", "")
	if string(raw) != `{"id":"`+clientID+`"}` || resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Content-Length") != fmt.Sprint(len(raw)) {
		t.Fatalf("got %q, headers %v", raw, resp.Header)
	}
}

func TestLargeResponsesStreamWithoutContentLength(t *testing.T) {
	big := `{"id":"` + realID + `","pad":"` + strings.Repeat("x", 4<<10) + `"}`
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(big)))
		io.WriteString(w, big)
	}))
	resp, raw := send(t, "GET", front.URL+"/session/x", "", "")
	want := strings.Replace(big, realID, clientID, 1)
	if string(raw) != want || resp.ContentLength != -1 {
		t.Fatalf("length %d (declared %d), want %d undeclared", len(raw), resp.ContentLength, len(want))
	}
}

func TestRequestBodiesOverTheLimitAre413(t *testing.T) {
	_, front := newProxy(t, echoUpstream())
	resp, raw := send(t, "POST", front.URL+"/session/"+clientID+"/message", "application/json", `{"x":"`+strings.Repeat("a", 2<<10)+`"}`)
	if resp.StatusCode != 413 || !strings.Contains(string(raw), "PayloadTooLarge") {
		t.Fatalf("%d %s", resp.StatusCode, raw)
	}
}

func TestGzippedRequestBodiesAreDecodedAndRewritten(t *testing.T) {
	_, front := newProxy(t, echoUpstream())
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	io.WriteString(zw, `{"sessionID":"`+clientID+`"}`)
	zw.Close()
	req, _ := http.NewRequest("POST", front.URL+"/x", &b)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got echoed
	json.NewDecoder(resp.Body).Decode(&got)
	if got.Body != `{"sessionID":"`+realID+`"}` {
		t.Fatalf("upstream saw %q", got.Body)
	}
}

func TestUploadsAreNotRead(t *testing.T) {
	_, front := newProxy(t, echoUpstream())
	body := strings.Repeat(clientID+" ", 400) // over the 1 KiB body limit
	_, raw := send(t, "POST", front.URL+"/file", "application/octet-stream", body)
	var got echoed
	json.Unmarshal(raw, &got)
	if got.Body != body {
		t.Fatalf("an upload was changed or refused: %s", raw)
	}
}

func TestHeadKeepsTheUpstreamsContentLength(t *testing.T) {
	body := `{"id":"` + realID + `"}`
	_, front := newProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		if r.Method != http.MethodHead {
			io.WriteString(w, body)
		}
	}))
	resp, _ := send(t, "HEAD", front.URL+"/session/"+clientID, "", "")
	if resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("HEAD Content-Length %q, want %d", resp.Header.Get("Content-Length"), len(body))
	}
}
