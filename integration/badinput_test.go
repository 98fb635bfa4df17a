package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBadInput is the table of bad and unusual inputs: each gets a clear 4xx
// in opencode's error shape, or passes through correctly, and the upstream is
// untouched where it must be. Over HTTP/1.1 and HTTP/2 (h2c).
func TestBadInput(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc, "MAX_BODY_SIZE=1MiB")
	oc.waitHealthy(t)

	h2c := &http.Client{Transport: &http.Transport{Protocols: new(http.Protocols)}}
	h2c.Transport.(*http.Transport).Protocols.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{"HTTP/1.1": http.DefaultClient, "HTTP/2": h2c}

	gz := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		io.WriteString(zw, s)
		zw.Close()
		return b.Bytes()
	}
	type request struct {
		method, path string
		body         []byte
		header       map[string]string
		chunked      bool // send without Content-Length
	}
	cases := []struct {
		name      string
		req       func(id string) request
		status    int
		errorName string // expected "name" of the error body, if any
		untouched bool   // the upstream must not get a new session
		h1Only    string // why the case cannot be sent over HTTP/2, if it cannot
	}{
		{"invalid JSON", func(id string) request { return request{"POST", "/session", []byte(`{"id":`), nil, false} }, 400, "BadRequest", true, ""},
		{"id of the wrong type", func(id string) request { return request{"POST", "/session", []byte(`{"id":["ses_a"]}`), nil, false} }, 400, "BadRequest", true, ""},
		{"NUL in the id", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"ses_a\u0000"}`), nil, false}
		}, 400, "BadRequest", true, ""},
		{"newline in the id", func(id string) request { return request{"POST", "/session", []byte(`{"id":"ses_a\nb"}`), nil, false} }, 400, "BadRequest", true, ""},
		{"unicode in the id", func(id string) request { return request{"POST", "/session", []byte(`{"id":"ses_ünï"}`), nil, false} }, 400, "BadRequest", true, ""},
		{"../ in the id", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"ses_../../etc/passwd"}`), nil, false}
		}, 400, "BadRequest", true, ""},
		{"10 MB id", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"ses_` + strings.Repeat("a", 10<<20) + `"}`), nil, false}
		}, 413, "PayloadTooLarge", true, ""},
		{"900 KB id under the body limit", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"ses_` + strings.Repeat("a", 900<<10) + `"}`), nil, false}
		}, 400, "BadRequest", true, ""},
		{"body over max_body_size", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"` + id + `","title":"` + strings.Repeat("x", 2<<20) + `"}`), nil, false}
		}, 413, "PayloadTooLarge", true, ""},
		{"10 MB id in the path", func(id string) request {
			return request{"GET", "/session/ses_" + strings.Repeat("a", 10<<20), nil, nil, false}
		}, 431, "", true, "Caddy advertises its header limit in HTTP/2 SETTINGS, so the client refuses to send the request at all"},
		{"unsupported request encoding", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"` + id + `"}`), map[string]string{"Content-Encoding": "br"}, false}
		}, 415, "UnsupportedMediaType", true, ""},
		{"gzip-encoded create", func(id string) request {
			return request{"POST", "/session", gz(`{"id":"` + id + `","title":"gz"}`), map[string]string{"Content-Encoding": "gzip"}, false}
		}, 200, "", false, ""},
		{"chunked create", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"` + id + `","title":"chunked"}`), nil, true}
		}, 200, "", false, ""},
		{"gzip accepted in the response", func(id string) request {
			return request{"POST", "/session", []byte(`{"id":"` + id + `"}`), map[string]string{"Accept-Encoding": "gzip"}, false}
		}, 200, "", false, ""},
	}
	for proto, client := range clients {
		t.Run(proto, func(t *testing.T) {
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					if c.h1Only != "" && proto != "HTTP/1.1" {
						t.Skip(c.h1Only)
					}
					id := fmt.Sprintf("ses_bad_%d_%d", i, time.Now().UnixNano())
					spec := c.req(id)
					before := upstreamSessionCount(t, oc)
					var body io.Reader = bytes.NewReader(spec.body)
					if spec.chunked {
						body = io.MultiReader(bytes.NewReader(spec.body)) // unknown length: sent chunked
					}
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, spec.method, proxy.URL+spec.path, body)
					if spec.body != nil {
						req.Header.Set("Content-Type", "application/json")
					}
					for k, v := range spec.header {
						req.Header.Set(k, v)
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatalf("%.300s", err)
					}
					defer resp.Body.Close()
					raw, _ := io.ReadAll(resp.Body)
					if resp.ProtoMajor != map[string]int{"HTTP/1.1": 1, "HTTP/2": 2}[proto] {
						t.Fatalf("answered over %s", resp.Proto)
					}
					if resp.StatusCode != c.status {
						t.Fatalf("status %d, want %d: %.300s", resp.StatusCode, c.status, raw)
					}
					if c.errorName != "" {
						var e struct {
							Name string
							Data struct{ Message string }
						}
						if json.Unmarshal(raw, &e) != nil || e.Name != c.errorName || e.Data.Message == "" {
							t.Fatalf("error body %.300s, want name %s with a message", raw, c.errorName)
						}
					}
					if c.status == 200 {
						var s session
						if json.Unmarshal(raw, &s) != nil || s.ID != id {
							t.Fatalf("created %.300s, want id %s", raw, id)
						}
						if n := len(upstreamSessionsOf(t, oc, id)); n != 1 {
							t.Fatalf("%d upstream sessions", n)
						}
					}
					if after := upstreamSessionCount(t, oc); c.untouched && after != before {
						t.Fatalf("the upstream went from %d to %d sessions", before, after)
					}
				})
			}
		})
	}
}
