package events

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

// eventMetrics describe resumable event streams, labelled by namespace.
var eventMetrics = struct {
	clients       *prometheus.GaugeVec
	hubs          *prometheus.GaugeVec
	subscriptions *prometheus.GaugeVec
	refusals      *prometheus.CounterVec
	resumes       *prometheus.CounterVec
	resyncs       *prometheus.CounterVec
	dropped       *prometheus.CounterVec
}{
	clients:       metrics.Gauge("event_clients", "Client event streams open (resumable and merged), bounded by max_clients."),
	hubs:          metrics.Gauge("event_streams", "Resumable event streams held (one per scope, with or without clients), bounded by max_streams."),
	refusals:      metrics.Counter("event_refusals_total", "Client event streams answered 429, by the bound they met (max_streams, max_clients, max_clients_per_ip).", "reason"),
	subscriptions: metrics.Gauge("event_subscriptions", "Event streams subscribed upstream (one per stream and worker, shared by its clients)."),
	resumes:       metrics.Counter("event_resumes_total", "Clients that resumed with Last-Event-ID and missed nothing."),
	resyncs:       metrics.Counter("event_resyncs_total", "Resync events, by reason (expired, unknown, overrun, upstream_reconnected).", "reason"),
	dropped:       metrics.Counter("event_clients_dropped_total", "Clients dropped because a write to them blocked for write_timeout."),
}

// RegisterMetrics adds the collectors to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	m := &eventMetrics
	return metrics.Register(registry, m.clients, m.hubs, m.refusals, m.subscriptions, m.resumes, m.resyncs, m.dropped)
}
