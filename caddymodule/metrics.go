package caddymodule

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/internal/metrics"
	"github.com/sessionid/caddy-sessionid/journal"
	"github.com/sessionid/caddy-sessionid/relocation"
)

// sessionMetrics are the handler's counters and histograms, labelled by
// namespace (package internal/metrics says how they are made and
// registered; the fleet, events and idempotency have their own).
var sessionMetrics = struct {
	creates        *prometheus.CounterVec
	replays        *prometheus.CounterVec
	conflicts      *prometheus.CounterVec
	invalidIDs     *prometheus.CounterVec
	createdMissing *prometheus.CounterVec
	adopted        *prometheus.CounterVec
	cacheLookups   *prometheus.CounterVec
	storeSeconds   *prometheus.HistogramVec
	rewrittenBytes *prometheus.CounterVec
	rewrittenIDs   *prometheus.CounterVec
}{
	creates:        metrics.Counter("creates_total", "Sessions created under a client-chosen id."),
	replays:        metrics.Counter("replays_total", "Creates answered with the existing session (Idempotent-Replayed)."),
	conflicts:      metrics.Counter("conflicts_total", "Creates refused with 409."),
	invalidIDs:     metrics.Counter("invalid_ids_total", "Creates refused with 400 for their id."),
	createdMissing: metrics.Counter("created_missing_total", "Sessions created by create_missing."),
	adopted:        metrics.Counter("adopted_total", "Interrupted creates whose upstream session was adopted or finished."),
	cacheLookups:   metrics.Counter("cache_lookups_total", "Id lookups, by whether the cache answered them.", "result"),
	storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "session_ids", Name: "storage_seconds",
		Help: "Latency of Caddy storage operations on mappings.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	}, []string{"namespace", "op"}),
	rewrittenBytes: metrics.Counter("rewritten_bytes_total", "Bytes passed through the id rewriter.", "direction"),
	rewrittenIDs:   metrics.Counter("rewritten_ids_total", "Ids rewritten.", "direction"),
}

// registerAllMetrics adds the collectors of the handler and of its
// subsystems to a config's registry.
func registerAllMetrics(registry *prometheus.Registry) error {
	for _, register := range []func(*prometheus.Registry) error{registerMetrics, access.RegisterMetrics, fleet.RegisterMetrics, events.RegisterMetrics, idempotency.RegisterMetrics, journal.RegisterMetrics, relocation.RegisterMetrics} {
		if err := register(registry); err != nil {
			return err
		}
	}
	return nil
}

// registerMetrics adds the handler's own collectors to a config's registry.
func registerMetrics(registry *prometheus.Registry) error {
	m := &sessionMetrics
	return metrics.Register(registry, m.creates, m.replays, m.conflicts, m.invalidIDs, m.createdMissing,
		m.adopted, m.cacheLookups, m.storeSeconds, m.rewrittenBytes, m.rewrittenIDs)
}

// observeStorage and observeLookup feed the index's measurements in.
func observeStorage(namespace string) func(op string, took time.Duration) {
	return func(op string, took time.Duration) {
		sessionMetrics.storeSeconds.WithLabelValues(namespace, op).Observe(took.Seconds())
	}
}

func observeLookup(namespace string) func(hit bool) {
	hits := sessionMetrics.cacheLookups.WithLabelValues(namespace, "hit")
	misses := sessionMetrics.cacheLookups.WithLabelValues(namespace, "miss")
	return func(hit bool) {
		if hit {
			hits.Inc()
		} else {
			misses.Inc()
		}
	}
}

// count adds one to a counter of this handler's namespace.
func (h *Handler) count(c *prometheus.CounterVec) { c.WithLabelValues(h.Namespace).Inc() }

// countRewrite records bytes and ids that went through the rewriter.
func (h *Handler) countRewrite(direction string, bytes int, ids int64) {
	sessionMetrics.rewrittenBytes.WithLabelValues(h.Namespace, direction).Add(float64(bytes))
	if ids > 0 {
		sessionMetrics.rewrittenIDs.WithLabelValues(h.Namespace, direction).Add(float64(ids))
	}
}
