package relay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// countNotifications LISTENs on the table's channel on a connection of its own and
// counts the notifications that are not the relay's probes, until the test ends.
func countNotifications(t *testing.T, dsn string, table pg.Table) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	l := pq.NewListener(dsn, 100*time.Millisecond, time.Second, nil)
	if err := l.Listen(table.Channel()); err != nil {
		_ = l.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range l.Notify {
			if m != nil && m.Extra == "" {
				n.Add(1)
			}
		}
	}()
	t.Cleanup(func() { _ = l.Close(); <-done })
	return &n
}

// While rows stream in (250 msg/s), the relay keeps the wake-up flag down and polls: writers'
// transactions send (almost) no NOTIFY. Afterwards it goes back to sleep with the flag
// up, and a single row wakes it by notification.
func TestStreamingWritersSendNoNotify(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	notified := countNotifications(t, dsn, table)

	cfg := testConfig(table)
	cfg.PollInterval = 30 * time.Second // only notifications or streaming can deliver fast
	r := startRelay(t, db, dsn, url, cfg)
	waitIdle(t, db, r)

	// 250 transactions per second, one row each, taken by a few writer connections:
	// a rate the relay keeps up with, which used to sleep between rows.
	const writers, txs, period = 4, 400, 4 * time.Millisecond
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for i := range jobs {
				if _, err := db.Exec(`INSERT INTO `+table.String()+` (exchange, routing_key, payload) VALUES ($1, 'k', $2)`,
					exchange, fmt.Appendf(nil, "%d", i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	// The first rows wake the relay by notification; the stream starts with the
	// second claim that finds rows. Count from then on.
	tick := time.NewTicker(period)
	i := 0
	for ; wakeFlagValue(t, db) == 1; i++ {
		if i == 1000 {
			t.Fatal("the relay did not lower the wake-up flag while rows streamed in")
		}
		<-tick.C
		jobs <- i
	}
	before := notified.Load()
	start := time.Now()
	for k := range txs {
		<-tick.C
		jobs <- i + k
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	t.Logf("%d warm-up transactions; then writers at %.0f tx/s", i, txs/time.Since(start).Seconds())
	total := i + txs
	s.waitDistinct(t, total, 20*time.Second)
	n := notified.Load() - before
	t.Logf("%d NOTIFYs for %d writer transactions (%.3f per transaction)", n, txs, float64(n)/float64(txs))
	if float64(n) > 0.1*float64(txs) {
		t.Errorf("%d of %d writer transactions sent a NOTIFY while rows streamed in, want at most 10%%", n, txs)
	}

	// The stream is over: the relay sleeps with the flag up, and a notification
	// wakes it again.
	waitIdle(t, db, r)
	start = time.Now()
	insertRow(t, db, table, exchange, "k", "after", nil)
	s.waitDistinct(t, total+1, 5*time.Second)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a row written after the stream took %v with a poll interval of %v: no wake-up by notification", d, cfg.PollInterval)
	}
}

// A burst of commits on a sleeping relay costs one NOTIFY, not one per transaction
// until the relay lowers the flag: the first writer takes the flag (migration 0006),
// the writers after it find it taken. Once the burst is published the relay raises
// the flag again, and the next lone row wakes it by notification.
func TestBurstOnSleepingRelaySendsOneNotify(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	notified := countNotifications(t, dsn, table)

	cfg := testConfig(table)
	cfg.PollInterval = 30 * time.Second // only notifications or streaming can deliver fast
	r := startRelay(t, db, dsn, url, cfg)
	waitIdle(t, db, r)

	// 8 writers commit 25 one-row transactions each, as fast as they can.
	const writers, each = 8, 25
	before := notified.Load()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range each {
				if _, err := db.Exec(`INSERT INTO `+table.String()+` (exchange, routing_key, payload) VALUES ($1, 'k', $2)`,
					exchange, fmt.Appendf(nil, "%d-%d", w, i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	s.waitDistinct(t, writers*each, 20*time.Second)
	n := notified.Load() - before
	t.Logf("%d NOTIFYs for a burst of %d writer transactions", n, writers*each)
	// One for the burst's first commit; a few more where the relay raised the flag
	// again between claims before the burst had reached it.
	if n > 3 {
		t.Errorf("a burst of %d transactions on a sleeping relay sent %d NOTIFYs, want at most 3", writers*each, n)
	}

	waitIdle(t, db, r)
	at := time.Now()
	insertRow(t, db, table, exchange, "k", "after", nil)
	s.waitDistinct(t, writers*each+1, 5*time.Second)
	if d := time.Since(at); d > 2*time.Second {
		t.Errorf("a row written after the burst took %v with a poll interval of %v: no wake-up by notification", d, cfg.PollInterval)
	}
}

// Two relays on one table, rows of one ordering key streaming in: one relay holds the
// key while the other finds nothing. Writers still send (almost) no NOTIFY: the idle
// relay does not raise the flag round after round, each raise letting the next writer
// take it and notify (TestTakenFlagIsRaisedAgainOnlyByTheRelayServingIt has the rule;
// here, on a quiet machine, 2-4 NOTIFYs per 500 transactions with it, 5-16 without).
func TestSecondRelayLeavesTakenFlagToTheOneServing(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	notified := countNotifications(t, dsn, table)

	cfg := testConfig(table)
	cfg.PollInterval = 30 * time.Second
	r1 := startRelay(t, db, dsn, url, cfg)
	r2 := startRelay(t, db, dsn, url, cfg)
	waitIdle(t, db, r1)
	waitIdle(t, db, r2)

	const txs, period = 500, 4 * time.Millisecond // 250 tx/s
	before := notified.Load()
	claims := r1.claims.Load() + r2.claims.Load()
	tick := time.NewTicker(period)
	for i := range txs {
		<-tick.C
		if _, err := db.Exec(`INSERT INTO `+table.String()+` (exchange, routing_key, payload, ordering_key) VALUES ($1, 'k', $2, 'one-key')`,
			exchange, fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	tick.Stop()
	s.waitDistinct(t, txs, 20*time.Second)
	n := notified.Load() - before
	c := r1.claims.Load() + r2.claims.Load() - claims
	t.Logf("%d NOTIFYs and %d claims for %d writer transactions on one key, two relays", n, c, txs)
	if float64(n) > 0.1*txs {
		t.Errorf("%d of %d writer transactions sent a NOTIFY with two relays on one key, want at most 10%%", n, txs)
	}
}

// The race: a writer's trigger finds the flag down (the relay is streaming), then the
// relay goes to sleep and raises the flag, then the writer commits. The writer sends no
// NOTIFY, and still its row is published within one poll interval of its commit.
func TestRowCommittedAsRelayFallsAsleepWaitsAtMostOnePollInterval(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	notified := countNotifications(t, dsn, table)

	cfg := testConfig(table)
	cfg.PollInterval = 2 * time.Second
	r := startRelay(t, db, dsn, url, cfg)
	waitIdle(t, db, r)

	// As a streaming relay would have it: the flag down.
	testenv.Exec(t, db, `SELECT setval('outbox_wakeup', 0)`)
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	var id string
	if err := tx.QueryRow(`INSERT INTO `+table.String()+` (exchange, routing_key, payload) VALUES ($1, 'k', 'late') RETURNING id::text`, exchange).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// Run the commit-time check now, while the flag is down: no NOTIFY at commit.
	if _, err := tx.Exec(`SET CONSTRAINTS ALL IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	// The relay finds the flag down at its next poll, raises it, claims (the row is
	// not committed yet), and sleeps.
	testenv.Eventually(t, 30*time.Second, "the relay to raise the flag again", func() bool { return wakeFlagValue(t, db) == 1 })
	waitIdle(t, db, r)
	before := notified.Load()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	s.waitDistinct(t, 1, 5*time.Second)
	took := s.messages()[0].at.Sub(committed)
	t.Logf("published %v after its commit (poll interval %v)", took, cfg.PollInterval)
	if n := notified.Load() - before; n != 0 {
		t.Errorf("the writer sent %d NOTIFYs; the test needs a commit that sends none", n)
	}
	// The relay's poll claims it at most one poll interval after the commit; the
	// second is for publishing it, on a machine that may be busy.
	if took > cfg.PollInterval+time.Second {
		t.Errorf("the row waited %v after its commit, more than one poll interval (%v)", took, cfg.PollInterval)
	}
}

// An idle relay sends one statement per poll interval, a peek, and no claim.
func TestIdleRelayPeeksOncePerPollInterval(t *testing.T) {
	t.Parallel()
	db, dsn, table := outboxDB(t)
	cfg := testConfig(table)
	cfg.PollInterval = 200 * time.Millisecond
	r := startRelay(t, db, dsn, testenv.AMQPURL(t), cfg)
	waitIdle(t, db, r)
	claims, peeks := r.claims.Load(), r.peeks.Load()
	const window = 1200 * time.Millisecond
	<-time.After(window) // measuring a rate over a window, not waiting for an event
	if n := r.claims.Load() - claims; n != 0 {
		t.Errorf("idle relay ran %d claims in %v, want none (a peek per poll interval)", n, window)
	}
	n := r.peeks.Load() - peeks
	if limit := int64(window/cfg.PollInterval) + 1; n > limit || n == 0 {
		t.Errorf("idle relay peeked %d times in %v, want 1 to %d (one per poll interval)", n, window, limit)
	}
}
