// Package metrics makes the module's Prometheus collectors the way Caddy's
// own are made: once per process, named caddy_session_ids_*, labelled by
// namespace first, and registered with the registry of every config that
// provisions a handler (each reload has a new registry; Caddy serves them on
// its admin endpoint's /metrics).
package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Counter is a counter labelled by namespace and labels.
func Counter(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "session_ids", Name: name, Help: help},
		append([]string{"namespace"}, labels...))
}

// Gauge is a gauge labelled by namespace.
func Gauge(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "caddy", Subsystem: "session_ids", Name: name, Help: help}, []string{"namespace"})
}

// Register adds collectors to a config's registry. A collector it has
// already (a second handler in the config) is fine; another collector under
// the same name is an error, as it would otherwise go unserved.
func Register(registry *prometheus.Registry, collectors ...prometheus.Collector) error {
	for _, c := range collectors {
		err := registry.Register(c)
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) && already.ExistingCollector == c {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}
