package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// A row larger than MaxMessageBytes is kept as dead at its first attempt, unsent, with
// the reason; it blocks its key, and the rows of other keys and unkeyed rows go on.
func TestRowOverMaxMessageBytesIsDeadAtOnce(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "rk")
	big := testenv.Count(t, db, `WITH i AS (INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		VALUES ($1, 'rk', decode(repeat('ab', 4096), 'hex'), 'k'), ($1, 'rk', 'behind', 'k') RETURNING 1) SELECT count(*) FROM i`, exchange)
	if big != 2 {
		t.Fatal("insert")
	}
	ids := backlog(t, db, table, exchange, "rk", 20)
	cfg := testConfig(table)
	cfg.MaxMessageBytes = 4095
	startRelay(t, db, dsn, url, cfg)
	s.waitDistinct(t, len(ids), 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "the large row dead", func() bool {
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) == 1
	})
	var attempts int
	var reason string
	if err := db.QueryRow(`SELECT attempts, last_error FROM outbox WHERE dead_at IS NOT NULL`).Scan(&attempts, &reason); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || reason != "payload of 4096 bytes is larger than the largest message the broker takes (4095 bytes)" {
		t.Errorf("dead row: attempts %d, last_error %q", attempts, reason)
	}
	if n := outboxCount(t, db, table, `ordering_key = 'k' AND dead_at IS NULL`); n != 1 {
		t.Errorf("%d rows of the key wait behind the dead one, want 1", n)
	}
	if s.total() != len(ids) {
		t.Errorf("%d messages arrived, want %d (the large row unsent)", s.total(), len(ids))
	}
}

// A broker whose max_message_size is below MaxMessageBytes refuses a larger message by
// closing the channel: that row is dead at its first attempt with the broker's reason,
// its batch's other rows are published, and the limit is learned: the next large row
// is dead without being sent.
func TestRowOverBrokerMaxMessageSizeIsDeadAtOnce(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t, testenv.WithRabbitMQConf("max_message_size = 1048576"))
	db, dsn, table := outboxDB(t)
	exchange, queue := topology(t, mq.URL(), "rk")
	s := consume(t, mq.URL(), queue)

	insertBig := func() {
		testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, 'rk', decode(repeat('ab', 2 << 20), 'hex'))`, exchange)
	}
	ids := backlog(t, db, table, exchange, "rk", 10)
	insertBig()
	more := backlog(t, db, table, exchange, "rk", 10)
	cfg := testConfig(table)
	cfg.MaxAttempts = 10
	r := startRelay(t, db, dsn, mq.URL(), cfg)
	s.waitDistinct(t, len(ids)+len(more), 30*time.Second)
	testenv.Eventually(t, 20*time.Second, "the large row dead", func() bool {
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) == 1
	})
	var attempts int
	var reason string
	if err := db.QueryRow(`SELECT attempts, last_error FROM outbox WHERE dead_at IS NOT NULL`).Scan(&attempts, &reason); err != nil {
		t.Fatal(err)
	}
	// Refused by the broker (alone on a channel), or up front once the limit was
	// learned from the pipelined batch's channel close.
	if attempts != 1 || !strings.Contains(reason, "larger than") || !strings.Contains(reason, "1048576") {
		t.Errorf("dead row: attempts %d, last_error %q", attempts, reason)
	}
	if got := r.maxMessage(); got != 1<<20 {
		t.Errorf("limit learned from the broker: %d, want %d", got, 1<<20)
	}
	testenv.Exec(t, db, `DELETE FROM outbox`)
	insertBig()
	testenv.Eventually(t, 20*time.Second, "the second large row dead", func() bool {
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) == 1
	})
	if err := db.QueryRow(`SELECT attempts, last_error FROM outbox WHERE dead_at IS NOT NULL`).Scan(&attempts, &reason); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || reason != "payload of 2097152 bytes is larger than the largest message the broker takes (1048576 bytes)" {
		t.Errorf("second dead row: attempts %d, last_error %q", attempts, reason)
	}
}

// An oversized row in the middle of its key's run: the rows before it are published,
// it is dead at once, the row behind it waits, and the relay does not claim the run
// again and again. (The hold used to take the run's earlier rows with it: nothing
// was published, the failure was put back, and the same run was claimed for ever.)
func TestOversizedRowMidRunLetsTheRowsBeforeItGo(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "rk")
	n := testenv.Count(t, db, `WITH i AS (INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		VALUES ($1, 'rk', 'before', 'k'), ($1, 'rk', decode(repeat('ab', 4096), 'hex'), 'k'), ($1, 'rk', 'behind', 'k') RETURNING 1) SELECT count(*) FROM i`, exchange)
	if n != 3 {
		t.Fatal("insert")
	}
	cfg := testConfig(table)
	cfg.MaxMessageBytes = 4095
	r := startRelay(t, db, dsn, url, cfg)
	testenv.Eventually(t, 20*time.Second, "the large row dead", func() bool {
		return outboxCount(t, db, table, `dead_at IS NOT NULL`) == 1
	})
	s.waitDistinct(t, 1, 10*time.Second)
	waitIdle(t, db, r)
	msgs := s.messages()
	if len(msgs) != 1 || string(msgs[0].Body) != "before" {
		t.Errorf("arrived %d messages, want one: the row before the large one", len(msgs))
	}
	if n := outboxCount(t, db, table, `dead_at IS NULL AND payload = 'behind'`); n != 1 {
		t.Errorf("the row behind the dead one: %d left, want 1 (blocked)", n)
	}
	claims := r.claims.Load()
	t.Logf("claims until idle: %d", claims)
	if claims > 50 {
		t.Errorf("%d claims for three rows: the relay claimed the same run again and again", claims)
	}
}
