package inbox

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/testenv"
)

func TestPurgerRemovesOnlyExpiredProcessedRows(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	_, err := db.Exec(`INSERT INTO inbox (consumer, message_id, received_at, processed_at, dead_at) VALUES
		('svc', 'old1', now() - interval '9 days', now() - interval '8 days', NULL),
		('svc', 'old2', now() - interval '9 days', now() - interval '8 days', NULL),
		('other', 'old3', now() - interval '9 days', now() - interval '7 days 1 minute', NULL),
		('svc', 'recent', now() - interval '9 days', now() - interval '6 days', NULL),
		('svc', 'unprocessed', now() - interval '30 days', NULL, NULL),
		('svc', 'dead', now() - interval '30 days', NULL, now() - interval '29 days')`)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	p, err := NewPurger(db, PurgerConfig{Table: tbl, BatchSize: 2}, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.PurgeOnce(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("PurgeOnce = %d, %v; want 3 rows", n, err)
	}
	var left string
	if err := db.QueryRow(`SELECT string_agg(message_id, ',' ORDER BY message_id) FROM inbox`).Scan(&left); err != nil || left != "dead,recent,unprocessed" {
		t.Errorf("rows left %q (%v), want dead,recent,unprocessed", left, err)
	}
	if got := counterValue(m.InboxPurged.WithLabelValues("inbox")); got != 3 {
		t.Errorf("purged metric = %d, want 3", got)
	}

	// Run purges at start and returns nil when cancelled.
	if _, err := db.Exec(`UPDATE inbox SET processed_at = now() - interval '1 year' WHERE message_id = 'recent'`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, "the first round", func() bool { return countRows(t, db, `SELECT count(*) FROM inbox`) == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestPurgerConfig(t *testing.T) {
	if _, err := NewPurger(nil, PurgerConfig{Retention: time.Second}); err == nil {
		t.Error("a retention of 1s was accepted")
	}
	c := PurgerConfig{}
	c.SetDefaults()
	if c.Retention != 168*time.Hour || c.Table != "inbox" {
		t.Errorf("defaults %+v", c)
	}
}
