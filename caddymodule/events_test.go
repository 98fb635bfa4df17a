package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// The event streams of a handler in mapping mode: its translator rewrites
// each event, following creates (package events has the streams' own tests).

// newIndex is an index on a storage of the test's own.
func newIndex(t testing.TB) *idmap.Index {
	t.Helper()
	index, err := idmap.NewIndex(idmap.NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test"), idmap.IndexConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(index.Close)
	return index
}

// eventsFront serves a handler of mode with these event streams in front of
// next over real HTTP, as Caddy would.
func eventsFront(t testing.TB, mode string, config events.Config, next caddyhttp.Handler) (*Handler, string) {
	t.Helper()
	h := &Handler{Mode: mode, Namespace: t.Name(), Events: &config}
	setUp(t, h, newIndex(t))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
		if err := h.ServeHTTP(w, r, next); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(func() {
		front.CloseClientConnections()
		front.Close()
	})
	return h, front.URL
}

func TestAStreamFollowsACreateAnotherInstanceHasUnderWay(t *testing.T) {
	upstream := upstreamtest.NewFakeStream()
	h, url := eventsFront(t, ModeMapping, events.Config{}, upstream)
	ctx := context.Background()
	// Another Caddy on the same storage: it has sent the create upstream
	// and will store the mapping a moment after the upstream's event.
	there, err := idmap.NewIndex(h.index.Store, idmap.IndexConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer there.Close()
	if err := there.Store.SavePending(ctx, idmap.Pending{ClientID: "ses_mine", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	client := upstreamtest.Subscribe(t, url+"/event", nil)
	client.Next()
	go func() {
		time.Sleep(150 * time.Millisecond)
		_ = there.Save(ctx, idmap.Mapping{ClientID: "ses_mine", RealID: "ses_upstream1"})
		_ = there.Store.RemovePending(ctx, "ses_mine")
	}()
	upstream.Publish(`{"type":"session.created","properties":{"sessionID":"ses_upstream1","info":{"id":"ses_upstream1","metadata":{"clientSessionID":"ses_mine"}}}}`)
	upstream.Publish(`{"type":"session.idle","properties":{"sessionID":"ses_upstream1"}}`)
	for range 2 {
		if ev := client.Next(); strings.Contains(ev.Data, "ses_upstream1") || !strings.Contains(ev.Data, `"sessionID":"ses_mine"`) {
			t.Fatalf("an event of the new session reached the client as %s", ev.Data)
		}
	}
}

func TestAfterAReloadAStreamIsRewrittenByTheNewConfig(t *testing.T) {
	upstream := upstreamtest.NewFakeStream()
	old, url := eventsFront(t, ModeMapping, events.Config{}, upstream)
	client := upstreamtest.Subscribe(t, url+"/event", nil)
	client.Next()

	// The new config's handler: same namespace, its own index (a Redis
	// storage is a new client in each config, and the old one is closed).
	renewed := &Handler{Mode: ModeMapping, Namespace: old.Namespace, Events: &events.Config{}}
	setUp(t, renewed, newIndex(t))
	if err := renewed.index.Save(context.Background(), idmap.Mapping{ClientID: "ses_mine", RealID: "ses_upstream2"}); err != nil {
		t.Fatal(err)
	}
	old.streams.Close() // the old config is unloaded

	upstream.Publish(`{"type":"session.idle","properties":{"sessionID":"ses_upstream2"}}`)
	if ev := client.Next(); !strings.Contains(ev.Data, `"sessionID":"ses_mine"`) {
		t.Fatalf("after the reload the stream carried %s, want the id the new config maps", ev.Data)
	}
	if upstream.Opened.Load() != 1 {
		t.Fatalf("the reload made %d subscriptions, want the one that was running", upstream.Opened.Load())
	}
}
