package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// eventMetrics describe resumable event streams, labelled by namespace.
var eventMetrics = struct {
	clients       *prometheus.GaugeVec
	subscriptions *prometheus.GaugeVec
	resumes       *prometheus.CounterVec
	resyncs       *prometheus.CounterVec
	dropped       *prometheus.CounterVec
}{
	clients:       gauge("event_clients", "Clients reading event streams."),
	subscriptions: gauge("event_subscriptions", "Event streams subscribed upstream (one per stream and worker, shared by its clients)."),
	resumes:       counter("event_resumes_total", "Clients that resumed with Last-Event-ID and missed nothing."),
	resyncs:       counter("event_resyncs_total", "Resync events, by reason (expired, unknown, overrun, upstream_reconnected).", "reason"),
	dropped:       counter("event_clients_dropped_total", "Clients dropped because a write to them blocked for write_timeout."),
}

func gauge(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "caddy", Subsystem: "session_ids", Name: name, Help: help}, []string{"namespace"})
}

// registerEventMetrics adds the collectors to a config's registry.
func registerEventMetrics(registry *prometheus.Registry) error {
	m := &eventMetrics
	for _, c := range []prometheus.Collector{m.clients, m.subscriptions, m.resumes, m.resyncs, m.dropped} {
		if err := registry.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}
