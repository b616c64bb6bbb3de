package relay

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/testenv"
)

// A relay given AMQP URLs keeps its own connection for as long as it runs, and one
// given no LISTEN URL polls; its metrics go to the given registerer.
func TestRelayWithItsOwnConnection(t *testing.T) {
	t.Parallel()
	db, _, table, url, exchange, s := setup(t, "outbox", "k")
	reg := prometheus.NewRegistry()
	cfg := testConfig(table)
	cfg.AMQPURLs = []string{url}
	cfg.PollInterval = 100 * time.Millisecond
	r, err := New(db, cfg, WithRegisterer(reg), WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	ids := backlog(t, db, table, exchange, "k", 3)
	s.waitDistinct(t, len(ids), 30*time.Second)
	testenv.Eventually(t, 10*time.Second, "the relay to be ready", r.Ready)
	if !r.WakeupsPolled() {
		t.Error("WakeupsPolled() = false without a LISTEN URL")
	}
	testenv.Eventually(t, 10*time.Second, "3 published in the given registry", func() bool {
		return gathered(t, reg, "sidebox_outbox_published_total") == 3
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if r.broker.Ready() {
		t.Error("the relay's own connection is still open after Run returned")
	}
}

// gathered sums the values of the metric family name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
