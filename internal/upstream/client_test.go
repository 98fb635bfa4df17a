package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// seen is what next saw of a request of the client's.
type seen struct {
	worker, method, uri, authorization string
}

func TestAClientAsksThroughTheHandlersNextWithNoneOfAClientsHeaders(t *testing.T) {
	var c Client
	if _, err := c.Ask(context.Background(), "w1:1", http.MethodGet, "/global/health", "", nil); !errors.Is(err, ErrNotReady) {
		t.Fatalf("before any request: %v, want ErrNotReady", err)
	}
	got := make(chan seen, 1)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		got <- seen{Worker(r), r.Method, r.RequestURI, r.Header.Get("Authorization")}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	client := httptest.NewRequest(http.MethodGet, "/session/ses_x?directory=/a", nil)
	client.Header.Set("Authorization", "Basic a-client")
	client = client.WithContext(context.WithValue(client.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	c.Learn(client, next)

	answer, err := c.Ask(context.Background(), "w2:2", http.MethodGet, "/session/status", "directory=/b", nil)
	if err != nil || answer.Status != http.StatusNoContent {
		t.Fatalf("%v %v", answer, err)
	}
	if s := <-got; s != (seen{"w2:2", http.MethodGet, "/session/status?directory=/b", ""}) {
		t.Fatalf("next saw %+v", s)
	}
}

func TestAClientsAskEndsWithItsContext(t *testing.T) {
	var c Client
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		<-r.Context().Done()
		return caddyhttp.Error(http.StatusGatewayTimeout, r.Context().Err())
	})
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	c.Learn(r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{})), next)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Ask(ctx, "", http.MethodGet, "/event", "", nil); FailureStatus(err) != http.StatusGatewayTimeout {
		t.Fatalf("%v, want the ask to end with its context", err)
	}
}
