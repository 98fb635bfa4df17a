package access

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

// Outcomes of the gate, the values of the "outcome" label.
const (
	outcomeVerifiedServed  = "verified_served"  // the upstream served new credentials: admitted, remembered
	outcomeVerifiedRefused = "verified_refused" // the upstream refused new credentials: remembered
	outcomeRefused         = "refused"          // a request answered with a refusal
	outcomeFailed          = "failed"           // the upstream could not be asked
)

var verdictMetrics = metrics.Counter("auth_total", "Callers verified with the upstream and requests refused, by outcome.", "outcome")

// RegisterMetrics adds the collector to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	return metrics.Register(registry, verdictMetrics)
}
