package status

import (
	"strings"
	"testing"

	"github.com/sidebox/sidebox/internal/outboxdb"
)

func TestAge(t *testing.T) {
	for s, want := range map[float64]string{0.2: "under a second", 42: "42s", 605: "10m5s", 3*3600 + 125: "3h2m", 50 * 3600: "2d2h"} {
		if got := Age(s); got != want {
			t.Errorf("Age(%v) = %q, want %q", s, got, want)
		}
	}
}

func TestExplainOutbox(t *testing.T) {
	s := &outboxdb.States{
		Retrying: outboxdb.StateDetail{Count: 1, OldestAgeSeconds: 600, Oldest: &outboxdb.FailedAt{
			Exchange: "orders", RoutingKey: "order.created", Attempts: 7, NextAttemptInSeconds: 150,
			LastError: `returned by the broker: 312 NO_ROUTE (exchange "orders", routing key "order.created")`}},
	}
	got := strings.Join(ExplainOutbox(s), "\n")
	for _, want := range []string{
		`retrying: 1 row failed and will be retried; the oldest was written 10m0s ago for exchange "orders", routing key "order.created", and failed 7 times; next attempt in 2m30s`,
		"last error: returned by the broker: 312 NO_ROUTE",
		`likely fix: no queue is bound to exchange "orders"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "pending") || strings.Contains(got, "dead") {
		t.Errorf("states without rows are explained:\n%s", got)
	}
}
