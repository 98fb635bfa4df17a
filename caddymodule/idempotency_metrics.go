package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
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
var promptMetrics = counter("idempotent_prompts_total", "Prompts sent with an Idempotency-Key, by outcome.", "outcome")

func registerPromptMetrics(registry *prometheus.Registry) error {
	if err := registry.Register(promptMetrics); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		return err
	}
	return nil
}

func (h *Handler) countPrompt(outcome string) {
	promptMetrics.WithLabelValues(h.Namespace, outcome).Inc()
}
