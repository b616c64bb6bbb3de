package relay

import (
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// With a publish timeout so short that it fires on every batch while confirms and
// returns are still arriving, a row still leaves the outbox only if it was delivered:
// unroutable rows are never taken for confirmed, whatever the interleaving of their
// return, their ack and the timeout. They end dead, every attempt a return (or stay
// for another attempt).
func TestPublishTimeoutNeverDeletesReturnedRows(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "bound")
	const unroutable, routable = 3000, 500
	lost := backlog(t, db, table, exchange, "nowhere", unroutable)
	delivered := backlog(t, db, table, exchange, "bound", routable)
	isUnroutable := make(map[string]bool, len(lost))
	for _, id := range lost {
		isUnroutable[id] = true
	}

	cfg := testConfig(table)
	cfg.PublishTimeout = time.Nanosecond // fires before the broker answers anything
	cfg.MaxAttempts = 5                  // every attempt is one more chance to lose the row
	cfg.RetryBackoff = time.Millisecond
	cfg.RetryBackoffMax = time.Millisecond
	r := startRelay(t, db, dsn, url, cfg)

	unroutableLeft := func() int {
		return outboxCount(t, db, table, `routing_key = 'nowhere'`)
	}
	// With every batch timing out, the last few rows make progress only when the
	// broker happens to answer before the timeout; nine in ten are enough.
	waitFor(t, 3*time.Minute, "most unroutable rows to be dead", func() bool {
		if n := unroutableLeft(); n != unroutable {
			t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
		}
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) >= unroutable*9/10
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := unroutableLeft(); n != unroutable {
		t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
	}
	if n := outboxCount(t, db, table, `dead_at IS NOT NULL AND (attempts <> 5 OR last_error NOT LIKE '%NO_ROUTE%')`); n != 0 {
		t.Errorf("%d dead rows without five returned attempts", n)
	}
	// The routable rows are delivered at least once each; none of the others ever is.
	s.waitDistinct(t, routable, time.Minute)
	for _, m := range s.messages() {
		if isUnroutable[m.MessageId] {
			t.Fatalf("unroutable message %s was delivered", m.MessageId)
		}
	}
	for _, id := range delivered {
		if s.count(id) == 0 {
			t.Errorf("routable message %s never arrived", id)
		}
	}
}

// The same, with the worst interleaving forced on every batch: after the timeout, the
// worker has drained the returns, and only then do all the confirms (and the returns
// before them) arrive. A confirm that was not in before the drain says nothing about a
// return, so those rows stay unknown and are published again; none is deleted.
func TestConfirmsAfterTheDrainAreNotTakenAsConfirmed(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, _ := setup(t, "outbox", "bound")
	const unroutable = 300
	backlog(t, db, table, exchange, "nowhere", unroutable)

	cfg := testConfig(table)
	cfg.BatchSize = 100
	cfg.PublishTimeout = time.Nanosecond
	cfg.MaxAttempts = 2
	cfg.RetryBackoff = time.Millisecond
	cfg.RetryBackoffMax = time.Millisecond
	var late, resolved atomic.Int64
	startRelay(t, db, dsn, url, cfg, func(r *Relay) {
		r.afterDrain = func(dcs []*amqp.DeferredConfirmation) {
			late.Add(int64(len(dcs)))
			timeout := time.After(10 * time.Second)
			for _, dc := range dcs {
				select {
				case <-dc.Done():
					if dc.Acked() {
						resolved.Add(1)
					}
				case <-timeout:
					return
				}
			}
		}
	})
	waitFor(t, 2*time.Minute, "every unroutable row to be dead", func() bool {
		if n := outboxCount(t, db, table, ""); n != unroutable {
			t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
		}
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) == unroutable
	})
	if resolved.Load() == 0 {
		t.Fatalf("no confirm arrived after the drain (%d were late): the test did not test anything", late.Load())
	}
	t.Logf("%d confirms came after the drain, %d of them acks", late.Load(), resolved.Load())
}
