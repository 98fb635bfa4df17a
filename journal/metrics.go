package journal

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

var full = metrics.Counter("journals_full_total", "Sessions whose journal passed its limit: they cannot be re-homed (GET /session_ids/workers lists them). Counted by the Caddy whose keeper found it, once per start.")

// RegisterMetrics adds the journal's collectors to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	return metrics.Register(registry, full)
}
