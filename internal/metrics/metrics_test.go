package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewRegistersEveryNamedFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	names := m.Names()
	if len(names) != 23 {
		t.Fatalf("got %d metric names, want 23: %v", len(names), names)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "sidebox_") {
			t.Errorf("metric %q lacks the sidebox_ prefix", n)
		}
	}
	// Registering twice on one registry must fail: proves New registered them all.
	defer func() {
		if recover() == nil {
			t.Fatal("second New on the same registry did not panic; collectors were not registered")
		}
	}()
	New(reg)
}
