package relay

import (
	"database/sql"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// A memory alarm far longer than the publish timeout: RabbitMQ stops reading from the
// relay's connection, so confirms, channel.close and channel.open all go unanswered.
// The batch transactions must not wait for that: each batch is settled right after
// its timeout, so no session stays idle in transaction, no attempt is spent, and once
// the alarm clears every row is delivered with no more duplicates than the batches
// that were on the wire when the connection was blocked. A stop during the block ends
// within the relay's grace period.
func TestMemoryAlarmHoldsNoBatchTransaction(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t)
	db, dsn, table := outboxDB(t)
	exchange, queue := topology(t, mq.URL(), "k")
	s := consume(t, mq.URL(), queue)

	cfg := testConfig(table)
	cfg.PublishTimeout = 2 * time.Second
	cfg.BatchSize = 50
	cfg.Workers = 2
	r := startRelay(t, db, dsn, mq.URL(), cfg)
	w := startWriter(t, db, table, exchange, 5*time.Millisecond, 1_000_000)
	s.waitDistinct(t, 200, 30*time.Second)

	mq.MemoryAlarm(t, true)
	waitRelayBlocked(t, mq)
	holdBlocked(t, db, table, r, cfg, 20*time.Second, true)
	if piled := outboxCount(t, db, table, ""); piled < 100 {
		t.Fatalf("only %d rows in the outbox during the block: the relay was not held up, the test proves nothing", piled)
	}
	mq.MemoryAlarm(t, false)

	// Every row arrives. A row arrives twice only if it was published into the blocked
	// connection: RabbitMQ takes it in once the alarm clears, and its row, without a
	// confirm, is published again. Each worker puts at most one batch there: after its
	// timeout it waits for a new channel, which the blocked connection does not open,
	// and the dispatcher hands batches only to workers with a channel.
	w.stop()
	w.wait()
	want := w.written()
	testenv.Eventually(t, 60*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	s.waitDistinct(t, len(want), 30*time.Second)
	for _, id := range want {
		if s.count(id) == 0 {
			t.Fatalf("message %s was lost", id)
		}
	}
	dup, bound := s.total()-len(want), cfg.Workers*cfg.BatchSize
	t.Logf("%d rows, %d duplicates (bound %d)", len(want), dup, bound)
	if dup > bound {
		t.Errorf("%d duplicates, more than the %d rows the workers can have on a blocked connection", dup, bound)
	}
	if n := outboxCount(t, db, table, `attempts > 0 OR dead_at IS NOT NULL`); n != 0 {
		t.Errorf("%d rows spent an attempt", n)
	}

	// Stopping during a block: the batches in flight time out, are settled, and Run
	// returns within its grace period without waiting for the channels to close.
	mq.MemoryAlarm(t, true)
	backlog(t, db, table, exchange, "k", 200)
	waitRelayBlocked(t, mq)
	if err := r.stop(); err != nil {
		t.Errorf("stop during the block: %v", err)
	}
	if n := outboxCount(t, db, table, `attempts > 0 OR dead_at IS NOT NULL`); n != 0 {
		t.Errorf("%d rows spent an attempt", n)
	}
}

// The same with messages big enough to fill the socket buffers of the blocked
// connection: the publishes themselves then wait for the alarm to clear, and the
// batch must not wait with them. (The client's heartbeat goroutine then waits behind
// the stuck write and stops extending the read deadline, so the client drops the
// connection some 15 s later; the alarm is held for less, so that this test sees the
// stuck publish, not a lost connection.)
func TestBlockedPublishHoldsNoBatchTransaction(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t)
	db, dsn, table := outboxDB(t)
	exchange, queue := topology(t, mq.URL(), "k")
	s := consume(t, mq.URL(), queue)

	cfg := testConfig(table)
	cfg.PublishTimeout = time.Second
	cfg.BatchSize = 16
	cfg.Workers = 1
	r := startRelay(t, db, dsn, mq.URL(), cfg)
	backlog(t, db, table, exchange, "k", 1)
	s.waitDistinct(t, 1, 30*time.Second)

	mq.MemoryAlarm(t, true)
	// Two batches of 16 MiB: more than the kernel buffers of a loopback connection.
	const rows, size = 32, 1 << 20
	if _, err := db.Exec(`INSERT INTO `+table.String()+` (exchange, routing_key, payload)
		SELECT $1, 'k', convert_to(repeat('x', $2), 'UTF8') FROM generate_series(1, $3)`, exchange, size, rows); err != nil {
		t.Fatal(err)
	}
	waitRelayBlocked(t, mq)
	holdBlocked(t, db, table, r, cfg, 8*time.Second, false)
	mq.MemoryAlarm(t, false)

	testenv.Eventually(t, 60*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	s.waitDistinct(t, 1+rows, 30*time.Second)
	t.Logf("%d duplicates", s.total()-1-rows)
	if n := outboxCount(t, db, table, `attempts > 0 OR dead_at IS NOT NULL`); n != 0 {
		t.Errorf("%d rows spent an attempt", n)
	}
}

// holdBlocked keeps RabbitMQ's alarm for hold, several publish timeouts, and checks
// meanwhile that no batch transaction stays open, no row spends an attempt and, with
// ready, that the relay stays ready. A batch transaction lasts a claim, a publish (at
// most PublishTimeout) and a settlement: it is idle between its statements for about
// PublishTimeout (5 s more are allowed for a loaded machine). Held for as long as the
// alarm, it would be idle for the whole hold.
func holdBlocked(t *testing.T, db *sql.DB, table pg.Table, r *running, cfg Config, hold time.Duration, ready bool) {
	t.Helper()
	limit := cfg.PublishTimeout + 5*time.Second
	var longest time.Duration
	notReady := 0
	for end := time.Now().Add(hold); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		idle := longestIdleInTransaction(t, db)
		longest = max(longest, idle)
		if idle > limit {
			t.Fatalf("a session of the relay is idle in transaction for %v during the block, more than PublishTimeout + 5s (%v)", idle.Round(time.Second), limit)
		}
		if n := outboxCount(t, db, table, `attempts > 0 OR dead_at IS NOT NULL`); n != 0 {
			t.Fatalf("%d rows spent an attempt during the block", n)
		}
		if ready && !r.Ready() {
			notReady++
		}
	}
	if notReady > 0 {
		t.Errorf("the relay was not ready at %d samples during the block", notReady)
	}
	t.Logf("longest idle in transaction during the block: %v", longest.Round(time.Millisecond))
}

// waitRelayBlocked waits until RabbitMQ blocks the relay's connection (it published
// during an alarm).
func waitRelayBlocked(t *testing.T, mq *testenv.RabbitMQ) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, "RabbitMQ to block the relay's connection", func() bool {
		for _, c := range mq.Connections(t) {
			if c.Name == "sidebox-relay-test" && c.State == "blocked" {
				return true
			}
		}
		return false
	})
}

// longestIdleInTransaction returns how long the session of the test's database that
// has been idle in a transaction the longest has been so, 0 when there is none.
func longestIdleInTransaction(t *testing.T, db *sql.DB) time.Duration {
	t.Helper()
	var secs float64
	err := db.QueryRow(`SELECT coalesce(max(extract(epoch FROM clock_timestamp() - state_change)), 0)
		FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&secs)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(secs * float64(time.Second))
}
