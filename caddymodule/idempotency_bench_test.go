package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/nativeserver"
)

// BenchmarkPromptAsync measures what a key costs on prompt_async in front of
// the reference native server (direct mode, file storage on tmpfs or disk):
// an unkeyed prompt, a keyed one (lock, record read, pending write, prompt,
// record write), and a replay (lock, record read; the upstream is not asked).
//
//	go test ./caddymodule -run '^$' -bench PromptAsync -benchtime 2000x
func BenchmarkPromptAsync(b *testing.B) {
	native, err := nativeserver.New(nativeserver.Config{DataDir: b.TempDir(), Directory: "/tmp"})
	if err != nil {
		b.Fatal(err)
	}
	back := httptest.NewServer(native)
	b.Cleanup(back.Close)
	target, _ := url.Parse(back.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { rp.ServeHTTP(w, r); return nil })
	index, err := idmap.NewIndex(idmap.NewStore(&certmagic.FileStorage{Path: b.TempDir()}, "bench"), idmap.IndexConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(index.Close)
	h := &Handler{Mode: ModeDirect, MaxBodySize: 1 << 20, MaxBufferSize: 1 << 20, Events: &events.Config{Off: true},
		Idempotency: &idempotency.Config{TTL: caddy.Duration(time.Hour), Wait: caddy.Duration(10 * time.Second)}}
	setUp(b, h, index)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
		if err := h.ServeHTTP(w, r, next); err != nil {
			http.Error(w, err.Error(), 500)
		}
	}))
	b.Cleanup(front.Close)
	client := front.Client()

	do := func(b *testing.B, path, key string, want int) {
		req, _ := http.NewRequest("POST", front.URL+path, strings.NewReader(`{"parts":[{"type":"text","text":"hello"}]}`))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set(idempotency.KeyHeader, key)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			b.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	// A session per 100 prompts: the native server rewrites a session's
	// whole record on every message, which would otherwise dominate.
	create := func(b *testing.B, id string) {
		req, _ := http.NewRequest("POST", front.URL+"/session", strings.NewReader(`{"id":"`+id+`"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("create %s: %v %v", id, err, resp)
		}
		resp.Body.Close()
	}
	run := func(name string, key func(i int) string, want int) {
		b.Run(name, func(b *testing.B) {
			var id string
			for i := 0; i < b.N; i++ {
				if i%100 == 0 {
					b.StopTimer()
					id = fmt.Sprintf("ses_bench_%s_%d_%d", strings.ReplaceAll(name, " ", "_"), b.N, i)
					create(b, id)
					if k := key(-1); k != "" { // a replay needs its first request
						do(b, "/session/"+id+"/prompt_async", k, want)
					}
					time.Sleep(20 * time.Millisecond) // let the native server finish replying
					b.StartTimer()
				}
				do(b, "/session/"+id+"/prompt_async", key(i), want)
			}
		})
	}
	run("unkeyed", func(int) string { return "" }, 204)
	run("keyed", func(i int) string {
		if i < 0 {
			return ""
		}
		return fmt.Sprintf("key-%d-%d", time.Now().UnixNano(), i)
	}, 204)
	run("replay", func(int) string { return "the-same-key" }, 204)
}
