package caddymodule

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func TestProvisionGivesTheIndexTheDocumentedCacheTimes(t *testing.T) {
	for _, tt := range []struct {
		name                  string
		h                     *Handler
		cacheTTL, negativeTTL time.Duration
	}{
		{"defaults", &Handler{}, defaultCacheTTL, defaultNegativeTTL},
		{"set", &Handler{CacheTTL: caddy.Duration(time.Minute), NegativeTTL: caddy.Duration(-1)}, time.Minute, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			h.Namespace = t.Name()
			if err := h.provision(&certmagic.FileStorage{Path: t.TempDir()}, prometheus.NewRegistry(), zap.NewNop()); err != nil {
				t.Fatal(err)
			}
			defer h.Cleanup()
			if h.index.TTL != tt.cacheTTL || h.index.NegativeTTL != tt.negativeTTL {
				t.Fatalf("the index caches mappings for %s and 'not mapped' for %s, want %s and %s",
					h.index.TTL, h.index.NegativeTTL, tt.cacheTTL, tt.negativeTTL)
			}
		})
	}
}
