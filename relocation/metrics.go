package relocation

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

var rehomes = metrics.Counter("rehomes_total", "Sessions made again from their journal, by cause (worker_lost: its worker failed its health checks for rehome_after, or was named to the admin API; session_gone: its worker answered 404 for it) and outcome (rehomed, failed).", "cause", "outcome")

// RegisterMetrics adds the relocation's collectors to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	return metrics.Register(registry, rehomes)
}
