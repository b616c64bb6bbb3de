package metrics

import (
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewRegistersEveryNamedFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	names := m.Names()
	// One name per collector field of Metrics: a field left out of New is missed.
	if want := reflect.TypeFor[Metrics]().NumField() - unexportedFields; len(names) != want {
		t.Fatalf("got %d metric names, want %d (one per collector): %v", len(names), want, names)
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

// unexportedFields are the fields of Metrics that are not collectors (names).
const unexportedFields = 1
