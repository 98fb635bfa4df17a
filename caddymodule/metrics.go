package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sessionMetrics are the handler's counters and histograms, labelled by
// namespace. Like Caddy's own, they exist once per process and are
// registered with the metrics registry of every config that provisions the
// handler (each reload has a new registry); Caddy serves them on its admin
// endpoint's /metrics.
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
	discoveries    *prometheus.CounterVec
	workerDown     *prometheus.CounterVec
}{
	creates:        counter("creates_total", "Sessions created under a client-chosen id."),
	replays:        counter("replays_total", "Creates answered with the existing session (Idempotent-Replayed)."),
	conflicts:      counter("conflicts_total", "Creates refused with 409."),
	invalidIDs:     counter("invalid_ids_total", "Creates refused with 400 for their id."),
	createdMissing: counter("created_missing_total", "Sessions created by create_missing."),
	adopted:        counter("adopted_total", "Interrupted creates whose upstream session was adopted or finished."),
	cacheLookups:   counter("cache_lookups_total", "Id lookups, by whether the cache answered them.", "result"),
	storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "session_ids", Name: "storage_seconds",
		Help: "Latency of Caddy storage operations on mappings.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	}, []string{"namespace", "op"}),
	rewrittenBytes: counter("rewritten_bytes_total", "Bytes passed through the id rewriter.", "direction"),
	rewrittenIDs:   counter("rewritten_ids_total", "Ids rewritten.", "direction"),
	discoveries:    counter("worker_discoveries_total", "Sessions whose worker was looked for on every worker, by result (found, absent, unknown).", "result"),
	workerDown:     counter("worker_unavailable_total", "Requests for a session answered 503 because its worker was down or not configured.", "worker"),
}

func counter(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "session_ids", Name: name, Help: help},
		append([]string{"namespace"}, labels...))
}

// registerMetrics adds the collectors to a config's registry.
func registerMetrics(registry *prometheus.Registry) error {
	m := &sessionMetrics
	for _, c := range []prometheus.Collector{m.creates, m.replays, m.conflicts, m.invalidIDs, m.createdMissing,
		m.adopted, m.cacheLookups, m.storeSeconds, m.rewrittenBytes, m.rewrittenIDs, m.discoveries, m.workerDown} {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
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
