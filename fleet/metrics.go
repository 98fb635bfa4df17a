package fleet

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

var (
	discoveries = metrics.Counter("worker_discoveries_total", "Sessions whose worker was looked for on every worker, by result (found, absent, unknown).", "result")
	workerDown  = metrics.Counter("worker_unavailable_total", "Requests for a session answered 503 because its worker was down or not configured.", "worker")
)

// RegisterMetrics adds the fleet's collectors to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	return metrics.Register(registry, discoveries, workerDown)
}
