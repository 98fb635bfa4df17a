package idempotency

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessionid/caddy-sessionid/internal/metrics"
)

// Outcomes of keyed prompts, the values of the "outcome" label.
const (
	outcomeSent      = "sent"      // sent upstream for the first time
	outcomeReplayed  = "replayed"  // answered from the record
	outcomeRecovered = "recovered" // an interrupted attempt was found upstream and finished
	outcomeResent    = "resent"    // an interrupted attempt had not reached the upstream and was sent again
	outcomeMismatch  = "mismatch"  // refused with 422: the key was used for another request
	outcomeInFlight  = "in_flight" // refused with 409: the key's first request was still running
)

// promptMetrics counts keyed prompts by outcome.
var promptMetrics = metrics.Counter("idempotent_prompts_total", "Prompts sent with an Idempotency-Key, by outcome.", "outcome")

// RegisterMetrics adds the collector to a config's registry.
func RegisterMetrics(registry *prometheus.Registry) error {
	return metrics.Register(registry, promptMetrics)
}

func (p *Prompts) count(outcome string) {
	promptMetrics.WithLabelValues(p.namespace, outcome).Inc()
}
