package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestACollectorRegisteredAgainIsFineAnotherUnderItsNameIsNot(t *testing.T) {
	registry := prometheus.NewRegistry()
	first := Counter("things_total", "Things.")
	if err := Register(registry, first); err != nil {
		t.Fatal(err)
	}
	if err := Register(registry, first); err != nil {
		t.Fatalf("the same collector again (a second handler): %v", err)
	}
	if err := Register(registry, Counter("things_total", "Things.")); err == nil {
		t.Fatal("a second collector under one name was accepted; it would never be served")
	}
}
