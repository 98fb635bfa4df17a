package caddymodule

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestTheHandlerAndItsSubsystemsRegisterEveryMetricOnceAndAgainOnAReload(t *testing.T) {
	registry := prometheus.NewRegistry()
	if err := registerAllMetrics(registry); err != nil {
		t.Fatalf("two collectors share a name: %v", err)
	}
	if err := registerAllMetrics(registry); err != nil {
		t.Fatalf("a second handler in the config: %v", err)
	}
	if err := registerAllMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatalf("the next config's registry: %v", err)
	}
}
