package relay

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// Every committed row arrives with its fields mapped onto the AMQP message; a row
// whose transaction rolled back never does.
func TestCommittedRowsArriveMappedAndRolledBackOnesNever(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "app.orders_outbox", "order.created")
	w, err := outbox.NewWriter(table.String())
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	payload := []byte{0x00, 0xff, 0x10, 'x', 0x00} // binary-safe
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.Write(ctx, tx, outbox.Message{
		Exchange: exchange, RoutingKey: "order.created", Payload: payload,
		Type: "OrderCreated", ContentType: "application/octet-stream",
		Headers: map[string]any{
			"s": "text", "i": 42, "big": int64(9007199254740993), "f": 1.5, "b": true, "n": nil,
			"obj": map[string]any{"a": 1, "z": nil}, "arr": []any{1, "two", nil, map[string]any{"k": false}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// A rolled-back row, and one committed with the defaults.
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := w.Write(ctx, tx, outbox.Message{Exchange: exchange, RoutingKey: "order.created", Payload: []byte("never")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var plainID string
	if err := db.QueryRow(`INSERT INTO `+table.String()+` (exchange, routing_key, payload) VALUES ($1, 'order.created', '{"id":42}'::bytea) RETURNING id::text`, exchange).Scan(&plainID); err != nil {
		t.Fatal(err)
	}
	var created time.Time
	var seq, plainSeq int64
	if err := db.QueryRow(`SELECT created_at, seq, (SELECT seq FROM `+table.String()+` WHERE id = $2) FROM `+table.String()+` WHERE id = $1`, id, plainID).Scan(&created, &seq, &plainSeq); err != nil {
		t.Fatal(err)
	}

	r := startRelay(t, db, dsn, url, testConfig(table))
	s.waitDistinct(t, 2, 30*time.Second)
	testenv.Eventually(t, 10*time.Second, "outbox empty", func() bool { return outboxCount(t, db, table, "") == 0 })
	// The rolled-back row cannot arrive later: the relay has drained the table. Stop it
	// so that anything still in transit would have been confirmed by now.
	if err := r.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := s.count(rolledBack.String()); n != 0 {
		t.Errorf("rolled-back message arrived %d times", n)
	}

	byID := map[string]received{}
	for _, m := range s.messages() {
		byID[m.MessageId] = m
	}
	m, ok := byID[id.String()]
	if !ok {
		t.Fatalf("message %s did not arrive; got %v", id, byID)
	}
	if m.MessageId != strings.ToLower(id.String()) {
		t.Errorf("message_id = %q, want the lower-case UUID %q", m.MessageId, id)
	}
	if m.Type != "OrderCreated" || m.ContentType != "application/octet-stream" {
		t.Errorf("type, content_type = %q, %q", m.Type, m.ContentType)
	}
	if m.DeliveryMode != amqp.Persistent {
		t.Errorf("delivery_mode = %d, want 2", m.DeliveryMode)
	}
	if !bytes.Equal(m.Body, payload) {
		t.Errorf("body = %x, want %x", m.Body, payload)
	}
	if m.Exchange != exchange || m.RoutingKey != "order.created" {
		t.Errorf("exchange, routing key = %q, %q", m.Exchange, m.RoutingKey)
	}
	if m.Timestamp.Unix() != created.Unix() {
		t.Errorf("timestamp = %v, want created_at %v (seconds)", m.Timestamp, created)
	}
	want := amqp.Table{
		"s": "text", "i": int64(42), "big": int64(9007199254740993), "f": 1.5, "b": true,
		"obj": amqp.Table{"a": int64(1)}, "arr": []any{int64(1), "two", nil, amqp.Table{"k": false}},
		"x-outbox-seq": seq,
	}
	if !reflect.DeepEqual(m.Headers, want) {
		t.Errorf("headers = %#v\nwant      %#v", m.Headers, want)
	}

	p, ok := byID[plainID]
	if !ok {
		t.Fatalf("the row inserted with the minimal INSERT did not arrive")
	}
	if p.ContentType != "application/json" || p.Type != "" || !reflect.DeepEqual(p.Headers, amqp.Table{"x-outbox-seq": plainSeq}) || string(p.Body) != `{"id":42}` {
		t.Errorf("minimal row: content_type %q, type %q, headers %v, body %q", p.ContentType, p.Type, p.Headers, p.Body)
	}
	counterReaches(t, r.metrics.Published, table, "published_total", 2)
}

// A backlog of 10,000 rows drains completely, each message exactly once.
func TestBacklogDrains(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	const n = 10000
	ids := backlog(t, db, table, exchange, "k", n)

	start := time.Now()
	r := startRelay(t, db, dsn, url, testConfig(table))
	// While it drains, the wake-up flag is down: writers would not notify.
	var up, down int
	testenv.Eventually(t, 60*time.Second, "the backlog to shrink", func() bool {
		left := outboxCount(t, db, table, "")
		if left > n/5 && left < n*4/5 {
			if wakeFlagValue(t, db) == 1 {
				up++
			} else {
				down++
			}
		}
		return left <= n/5
	})
	t.Logf("wake-up flag during the drain: down in %d samples, up in %d", down, up)
	if up > down {
		t.Errorf("wake-up flag up in %d of %d samples during the drain; writers would notify under load", up, up+down)
	}
	s.waitDistinct(t, n, 60*time.Second)
	took := time.Since(start)
	testenv.Eventually(t, 10*time.Second, "outbox empty", func() bool { return outboxCount(t, db, table, "") == 0 })
	t.Logf("drained %d rows in %v (%.0f msg/s)", n, took, n/took.Seconds())
	for _, id := range ids {
		if c := s.count(id); c != 1 {
			t.Fatalf("message %s arrived %d times, want once", id, c)
		}
	}
	if s.total() != n {
		t.Errorf("%d deliveries, want %d", s.total(), n)
	}
	counterReaches(t, r.metrics.Published, table, "published_total", n)
	// Idle now: the wake-up flag is up so that writers notify.
	testenv.Eventually(t, 5*time.Second, "wake-up flag set", func() bool {
		return wakeFlagValue(t, db) == 1
	})
	if !r.Ready() {
		t.Error("Ready() = false with both dependencies up")
	}
	if err := r.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if r.Ready() {
		t.Error("Ready() = true after Run returned")
	}
}

// rowState is the bookkeeping of one row.
type rowState struct {
	attempts  int
	lastError string
	dead      bool
}

func stateOf(t *testing.T, db interface {
	QueryRow(string, ...any) *sql.Row
}, table pg.Table, id string) (rowState, bool) {
	t.Helper()
	var s rowState
	var lastError sql.NullString
	err := db.QueryRow(`SELECT attempts, last_error, dead_at IS NOT NULL FROM `+table.String()+` WHERE id = $1`, id).Scan(&s.attempts, &lastError, &s.dead)
	if err == sql.ErrNoRows {
		return s, false
	}
	if err != nil {
		t.Fatal(err)
	}
	s.lastError = lastError.String
	return s, true
}

// insertRow inserts one row and returns its id.
func insertRow(t *testing.T, db *sql.DB, table pg.Table, exchange, key, body string, extra map[string]any) string {
	t.Helper()
	cols, vals, args := []string{"exchange", "routing_key", "payload"}, []string{"$1", "$2", "$3"}, []any{exchange, key, []byte(body)}
	for c, v := range extra {
		args = append(args, v)
		cols = append(cols, c)
		vals = append(vals, fmt.Sprintf("$%d", len(args)))
	}
	var id string
	q := `INSERT INTO ` + table.String() + ` (` + strings.Join(cols, ", ") + `) VALUES (` + strings.Join(vals, ", ") + `) RETURNING id::text`
	if err := db.QueryRow(q, args...).Scan(&id); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return id
}

// A row the broker returns as unroutable is retried with backoff and kept as dead after
// the last attempt; the rows around it are published as usual.
func TestUnroutableRowRetriesThenIsKeptDead(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "good")

	var good []string
	for i := range 5 {
		good = append(good, insertRow(t, db, table, exchange, "good", fmt.Sprint("before ", i), nil))
	}
	bad := insertRow(t, db, table, exchange, "nowhere", "unroutable", nil)
	for i := range 5 {
		good = append(good, insertRow(t, db, table, exchange, "good", fmt.Sprint("after ", i), nil))
	}

	cfg := testConfig(table)
	cfg.MaxAttempts = 3
	cfg.RetryBackoff = 100 * time.Millisecond
	cfg.RetryBackoffMax = 400 * time.Millisecond
	cfg.PollInterval = 10 * time.Second // retries are woken by their due time, not by polling
	start := time.Now()
	r := startRelay(t, db, dsn, url, cfg)

	s.waitDistinct(t, len(good), 20*time.Second)
	var st rowState
	testenv.Eventually(t, 10*time.Second, "the unroutable row to be dead", func() bool {
		var ok bool
		st, ok = stateOf(t, db, table, bad)
		if !ok {
			t.Fatal("the unroutable row was removed from the outbox")
		}
		return st.dead
	})
	took := time.Since(start)
	if st.attempts != 3 {
		t.Errorf("attempts = %d, want 3", st.attempts)
	}
	if !strings.Contains(st.lastError, "NO_ROUTE") || !strings.Contains(st.lastError, "nowhere") {
		t.Errorf("last_error = %q, want the broker's NO_ROUTE and the routing key", st.lastError)
	}
	// Two retries, after at least half of 100 ms and of 200 ms (equal jitter).
	if took < 150*time.Millisecond {
		t.Errorf("dead after %v: the retries did not back off", took)
	}
	if took > 5*time.Second {
		t.Errorf("dead only after %v: retries waited for polling instead of their due time", took)
	}
	for _, id := range good {
		if c := s.count(id); c != 1 {
			t.Errorf("good message %s arrived %d times", id, c)
		}
	}
	if n := s.count(bad); n != 0 {
		t.Errorf("unroutable message arrived %d times", n)
	}
	counterReaches(t, r.metrics.Returned, table, "returned_total", 3)
	counterReaches(t, r.metrics.DeadTotal, table, "dead_total", 1)
	// Dead rows are kept, and not published again.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := outboxCount(t, db, table, ""); n != 1 {
		t.Errorf("%d rows left in the outbox, want the dead one", n)
	}
}

// A row for a missing exchange makes the broker close the channel; the relay finds that
// row, counts the attempt against it alone, and keeps publishing the others.
func TestMissingExchangeFailsOnlyItsRow(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	var good []string
	for i := range 30 {
		good = append(good, insertRow(t, db, table, exchange, "k", fmt.Sprint("before ", i), nil))
	}
	missing := testenv.Name(t, "missing")
	bad := insertRow(t, db, table, missing, "k", "to nowhere", nil)
	for i := range 30 {
		good = append(good, insertRow(t, db, table, exchange, "k", fmt.Sprint("after ", i), nil))
	}
	cfg := testConfig(table)
	cfg.MaxAttempts = 3
	startRelay(t, db, dsn, url, cfg)

	s.waitDistinct(t, len(good), 20*time.Second)
	var st rowState
	testenv.Eventually(t, 10*time.Second, "the row for the missing exchange to be dead", func() bool {
		st, _ = stateOf(t, db, table, bad)
		return st.dead
	})
	if st.attempts != 3 || !strings.Contains(st.lastError, "NOT_FOUND") {
		t.Errorf("attempts = %d, last_error = %q; want 3 and the broker's NOT_FOUND", st.attempts, st.lastError)
	}
	testenv.Eventually(t, 10*time.Second, "only the dead row left", func() bool { return outboxCount(t, db, table, "") == 1 })
	for _, id := range good {
		if s.count(id) == 0 {
			t.Errorf("good message %s did not arrive", id)
		}
	}
}

// Headers that AMQP cannot carry make the row dead at its first attempt, with a clear
// reason: not a crash and not a stuck table.
func TestUnmappableHeadersFailTheRow(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	bad := insertRow(t, db, table, exchange, "k", "bad", map[string]any{"headers": `{"n": 100000000000000000000}`})
	good := insertRow(t, db, table, exchange, "k", "good", map[string]any{"headers": `{"n": 1}`})
	cfg := testConfig(table)
	cfg.MaxAttempts = 2
	startRelay(t, db, dsn, url, cfg)
	s.waitDistinct(t, 1, 20*time.Second)
	if s.count(good) != 1 {
		t.Errorf("good message arrived %d times", s.count(good))
	}
	var st rowState
	testenv.Eventually(t, 10*time.Second, "the row with bad headers to be dead", func() bool {
		st, _ = stateOf(t, db, table, bad)
		return st.dead
	})
	if st.attempts != 1 || !strings.Contains(st.lastError, "does not fit in 64 bits") {
		t.Errorf("attempts = %d, last_error = %q", st.attempts, st.lastError)
	}
}

// A delayed row is not published before its available_at, and promptly after it
// without waiting for the poll interval.
func TestDelayedRowWaitsForAvailableAt(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	cfg := testConfig(table)
	cfg.PollInterval = 30 * time.Second
	startRelay(t, db, dsn, url, cfg)
	now := insertRow(t, db, table, exchange, "k", "now", nil)
	s.waitDistinct(t, 1, 10*time.Second)

	const delay = 1500 * time.Millisecond
	var due time.Time
	var later string
	if err := db.QueryRow(`INSERT INTO outbox (exchange, routing_key, payload, available_at)
		VALUES ($1, 'k', 'later', now() + make_interval(secs => $2)) RETURNING id::text, available_at`, exchange, delay.Seconds()).Scan(&later, &due); err != nil {
		t.Fatal(err)
	}
	s.waitDistinct(t, 2, 10*time.Second)
	var at time.Time
	for _, m := range s.messages() {
		if m.MessageId == later {
			at = m.at
		}
	}
	if at.Before(due) {
		t.Errorf("delayed message arrived %v before its available_at", due.Sub(at))
	}
	if at.After(due.Add(time.Second)) {
		t.Errorf("delayed message arrived %v after its available_at", at.Sub(due))
	}
	if s.count(now) != 1 || s.count(later) != 1 {
		t.Errorf("deliveries: now %d, later %d; want 1 each", s.count(now), s.count(later))
	}
}

// The bound on a batch's rows after publish timeouts (pure logic): down to half, or to
// what was confirmed in time, never below one; back up by a fiftieth of the batch size
// per batch confirmed in time, then gone.
func TestBatchCapAfterPublishTimeouts(t *testing.T) {
	r := &Relay{cfg: Config{BatchSize: 500}, log: zap.NewNop()}
	for _, step := range []struct {
		inTime int // -1: a batch confirmed in time
		want   int64
	}{
		{inTime: 400, want: 250}, {inTime: 40, want: 40}, {inTime: 0, want: 1}, {inTime: 0, want: 1},
		{inTime: -1, want: 11}, {inTime: -1, want: 21}, {inTime: 3, want: 3},
	} {
		if step.inTime < 0 {
			r.publishedInTime()
		} else {
			r.publishTimedOut(step.inTime)
		}
		if got := r.batchCap.Load(); got != step.want {
			t.Fatalf("after %+v: bound %d, want %d", step, got, step.want)
		}
	}
	for range 50 {
		r.publishedInTime()
	}
	if got := r.batchCap.Load(); got != 0 {
		t.Fatalf("after 50 batches in time the bound is %d, want none (0)", got)
	}
	d := &dispatcher{r: r}
	r.batchCap.Store(7)
	if got := d.limit(); got != 7 {
		t.Fatalf("claim limit %d under a bound of 7", got)
	}
}
