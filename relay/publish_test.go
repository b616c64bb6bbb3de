package relay

import (
	"context"
	"database/sql"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// With a publish timeout so short that it fires on every batch while confirms and
// returns are still arriving, a row still leaves the outbox only if it was delivered:
// unroutable rows are never taken for confirmed, whatever the interleaving of their
// return, their ack and the timeout; they stay pending, retrying or dead.
func TestPublishTimeoutNeverDeletesReturnedRows(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "bound")
	const unroutable, routable = 3000, 500
	backlog(t, db, table, exchange, "nowhere", unroutable)
	delivered := backlog(t, db, table, exchange, "bound", routable)

	cfg := testConfig(table)
	cfg.PublishTimeout = time.Nanosecond // fires before the broker answers anything
	cfg.MaxAttempts = 5
	cfg.RetryBackoff = time.Millisecond
	cfg.RetryBackoffMax = time.Millisecond
	r := startRelay(t, db, dsn, url, cfg)

	unroutableLeft := func() int {
		return outboxCount(t, db, table, `routing_key = 'nowhere'`)
	}
	// How fast rows progress depends on how much of the broker's answers beats the
	// timeout; what matters is many batches, each a chance to lose rows.
	testenv.Eventually(t, 3*time.Minute, "400 batches, or every row settled", func() bool {
		if n := unroutableLeft(); n != unroutable {
			t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
		}
		return r.claims.Load() >= 400 || outboxCount(t, db, table, `dead_at IS NULL`) == 0
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := unroutableLeft(); n != unroutable {
		t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
	}
	if n := outboxCount(t, db, table, `routing_key = 'nowhere' AND attempts > 0 AND last_error NOT LIKE '%NO_ROUTE%'`); n != 0 {
		t.Errorf("%d unroutable rows failed for another reason than a return", n)
	}
	// Every routable row that left the outbox was delivered.
	var gone []string
	for _, id := range delivered {
		if _, ok := stateOf(t, db, table, id); !ok {
			gone = append(gone, id)
		}
	}
	testenv.Eventually(t, 30*time.Second, "every deleted row to be delivered", func() bool {
		for _, id := range gone {
			if s.count(id) == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("%d rows deleted, all delivered; %d unroutable rows dead", len(gone), outboxCount(t, db, table, `dead_at IS NOT NULL`))
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
	r := startRelay(t, db, dsn, url, cfg, func(r *Relay) {
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
	testenv.Eventually(t, 2*time.Minute, "30 batches with acks after the drain, or every row dead", func() bool {
		if n := outboxCount(t, db, table, ""); n != unroutable {
			t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
		}
		return resolved.Load() > 0 && (r.claims.Load() >= 30 || outboxCount(t, db, table, `dead_at IS NULL`) == 0)
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := outboxCount(t, db, table, ""); n != unroutable {
		t.Fatalf("%d unroutable rows left the outbox without being delivered", unroutable-n)
	}
	t.Logf("%d confirms came after the drain, %d of them acks", late.Load(), resolved.Load())
}

// The ordering key and the sequence reach the wire as x-ordering-key and x-outbox-seq,
// and the inbox consumer at the other end stores the key: relay → RabbitMQ → inbox.
func TestOrderingKeyAndSeqReachTheInbox(t *testing.T) {
	t.Parallel()
	db, dsn, table := outboxDB(t)
	inboxTable := pg.MustParseTable("inbox")
	if err := inbox.Migrate(context.Background(), db, inboxTable.String()); err != nil {
		t.Fatal(err)
	}
	url := testenv.AMQPURL(t)
	exchange, queue := topology(t, url, "k")

	ctx := context.Background()
	write := func(m outbox.Message) (id string, seq int64) {
		t.Helper()
		m.Exchange, m.RoutingKey, m.Payload = exchange, "k", []byte("{}")
		u, err := outbox.Write(ctx, db, m)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(`SELECT seq FROM outbox WHERE id = $1`, u).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return u.String(), seq
	}
	keyed1, seq1 := write(outbox.Message{OrderingKey: "order-42", Headers: map[string]any{"x-ordering-key": "forged", "x-outbox-seq": -1}})
	keyed2, seq2 := write(outbox.Message{OrderingKey: "order-42"})
	plain, seq3 := write(outbox.Message{Headers: map[string]any{"x-ordering-key": "forged", "h": "v"}})

	startRelay(t, db, dsn, url, testConfig(table))
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	b := broker.New([]string{url}, broker.Config{Name: "sidebox-inbox-test", Backoff: fastBackoff()}, log, nil)
	bctx, bcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(bctx) })
	c, err := inbox.NewConsumer(db, inbox.ConsumerConfig{Queue: queue, Table: inboxTable.String(), Consumer: "test"},
		inbox.WithConnection(b), inbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	wg.Go(func() {
		if err := c.Run(cctx); err != nil {
			t.Errorf("inbox consumer: %v", err)
		}
	})
	t.Cleanup(func() { ccancel(); bcancel(); wg.Wait() })

	testenv.Eventually(t, 30*time.Second, "three inbox rows", func() bool {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM inbox`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 3
	})
	for _, want := range []struct {
		id  string
		key sql.NullString
		seq int64
	}{
		{keyed1, sql.NullString{String: "order-42", Valid: true}, seq1},
		{keyed2, sql.NullString{String: "order-42", Valid: true}, seq2},
		{plain, sql.NullString{}, seq3},
	} {
		var key sql.NullString
		var seq sql.NullInt64
		if err := db.QueryRow(`SELECT ordering_key, (headers->>'x-outbox-seq')::bigint FROM inbox WHERE message_id = $1`, want.id).Scan(&key, &seq); err != nil {
			t.Fatalf("inbox row %s: %v", want.id, err)
		}
		if key != want.key || seq != (sql.NullInt64{Int64: want.seq, Valid: true}) {
			t.Errorf("inbox row %s: ordering_key %v, x-outbox-seq %v; want %v, %d", want.id, key, seq, want.key, want.seq)
		}
	}
}

// A row the relay can never publish as it is (headers AMQP cannot carry, an exchange or
// routing key beyond 255 bytes) is kept as dead at its first attempt, with the reason,
// instead of spending all its attempts; the rows around it are published.
func TestUnpublishableRowIsDeadAtOnce(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	bad := map[string]string{ // id → what last_error must say
		insertRow(t, db, table, exchange, "k", "big integer", map[string]any{"headers": `{"n": 100000000000000000000}`}):          `header "n": integer 100000000000000000000 does not fit in 64 bits`,
		insertRow(t, db, table, exchange, "k", "long name", map[string]any{"headers": `{"` + strings.Repeat("h", 256) + `": 1}`}): "name is 256 bytes long",
		insertRow(t, db, table, strings.Repeat("e", 256), "k", "long exchange", nil):                                              "exchange is 256 bytes long",
		insertRow(t, db, table, exchange, strings.Repeat("r", 256), "long routing key", nil):                                      "routing_key is 256 bytes long",
		insertRow(t, db, table, exchange, "k", "keyed", map[string]any{"headers": `{"f": 1e999}`, "ordering_key": "a"}):           `header "f": integer 10000000000000000000... (1000 characters) does not fit`,
	}
	good := insertRow(t, db, table, exchange, "k", "good", nil)
	cfg := testConfig(table)
	cfg.MaxAttempts = 10
	r := startRelay(t, db, dsn, url, cfg)
	s.waitDistinct(t, 1, 20*time.Second)
	if s.count(good) != 1 {
		t.Errorf("good message arrived %d times", s.count(good))
	}
	for id, reason := range bad {
		var st rowState
		testenv.Eventually(t, 10*time.Second, "the unpublishable row to be dead", func() bool {
			st, _ = stateOf(t, db, table, id)
			return st.dead || st.attempts > 1
		})
		if !st.dead || st.attempts != 1 || !strings.Contains(st.lastError, reason) {
			t.Errorf("row %s: dead %v, attempts %d, last_error %q; want dead after 1 attempt, with %q", id, st.dead, st.attempts, st.lastError, reason)
		}
	}
	counterReaches(t, r.metrics.DeadTotal, table, "dead_total", float64(len(bad)))
}

// Floats written with outbox.Write arrive as the same floats, whatever their size:
// jsonb spells 1e21 as 1000000000000000000000, which must not turn it into an integer
// out of range (a message that could never be published) nor a whole float into an
// integer.
func TestFloatHeadersArriveAsFloats(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	headers := map[string]any{"big": 1e21, "whole": 5.0, "tiny": 1e-7, "max": math.MaxFloat64, "neg": -2.5e300,
		"list": []any{1e22, 3.0}, "int": 7}
	id, err := outbox.Write(context.Background(), db, outbox.Message{Exchange: exchange, RoutingKey: "k", Payload: []byte("{}"), Headers: headers})
	if err != nil {
		t.Fatal(err)
	}
	startRelay(t, db, dsn, url, testConfig(table))
	s.waitDistinct(t, 1, 20*time.Second)
	m := s.messages()[0]
	if m.MessageId != id.String() {
		t.Fatalf("received %s, want %s", m.MessageId, id)
	}
	delete(m.Headers, "x-outbox-seq")
	want := amqp.Table{"big": 1e21, "whole": 5.0, "tiny": 1e-7, "max": math.MaxFloat64, "neg": -2.5e300,
		"list": []any{1e22, 3.0}, "int": int64(7)}
	if !reflect.DeepEqual(m.Headers, want) {
		t.Errorf("headers = %#v\nwant      %#v", m.Headers, want)
	}
}

// A link too slow to confirm a whole batch within PublishTimeout: each timeout halves
// the rows the next batches take, until they are confirmed in time, so the backlog
// drains with few duplicates. Batches of the full size would time out round after
// round, every round sending the whole batch again behind the copies still in flight.
func TestSlowLinkShrinksBatchesUntilConfirmsArriveInTime(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "slow")
	const rows, size = 400, 2000
	testenv.Exec(t, db, `INSERT INTO `+table.String()+` (exchange, routing_key, payload)
		SELECT $1, 'slow', convert_to(lpad(i::text, $2, '0'), 'UTF8') FROM generate_series(1, $3) i`, exchange, size, rows)

	// 100 KB/s: a batch of 400 rows of 2 KB takes 8 s to send; 1 s carries about 50.
	proxy := testenv.Proxy(t, url)
	proxy.Bandwidth(t, 100)
	cfg := testConfig(table)
	cfg.BatchSize = rows
	cfg.PublishTimeout = time.Second
	r := startRelay(t, db, dsn, proxy.URL(url), cfg)
	s.waitDistinct(t, rows, 90*time.Second)
	testenv.Eventually(t, 30*time.Second, "the outbox to be empty", func() bool { return outboxCount(t, db, table, "") == 0 })
	dups := s.total() - rows
	t.Logf("%d rows over a 100 KB/s link with a 1 s publish timeout: %d duplicates, %d claims, batches now at most %d rows",
		rows, dups, r.claims.Load(), r.batchCap.Load())
	// Sending the first full batch alone takes 8 s: the rows it could not confirm
	// within the second (about 350) are sent again, and so are those of the next
	// batches until one fits (about 550 duplicates in all). Batches that kept their
	// full size did not drain the outbox within a minute.
	if dups > 2*rows {
		t.Errorf("%d duplicates for %d rows: batches did not shrink to what the link confirms in time", dups, rows)
	}
}
