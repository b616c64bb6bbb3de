package relay

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// migrate creates the outbox table t.
func migrate(t *testing.T, db *sql.DB, table pg.Table) {
	t.Helper()
	testenv.Migrate(t, db, outbox.Migrate, table.String())
}

// outboxDB gives a test a fresh database with the table outbox migrated.
func outboxDB(t *testing.T) (db *sql.DB, dsn string, table pg.Table) {
	t.Helper()
	db, dsn = testenv.DB(t)
	table = pg.MustParseTable("outbox")
	migrate(t, db, table)
	return db, dsn, table
}

// setup gives a test a fresh database with the outbox table tableName migrated, and an
// exchange on the shared broker that routes key to a queue the returned sink consumes.
func setup(t *testing.T, tableName, key string) (db *sql.DB, dsn string, table pg.Table, url, exchange string, s *sink) {
	t.Helper()
	db, dsn = testenv.DB(t)
	table = pg.MustParseTable(tableName)
	migrate(t, db, table)
	url = testenv.AMQPURL(t)
	exchange, queue := topology(t, url, key)
	return db, dsn, table, url, exchange, consume(t, url, queue)
}

// wakeFlagValue reads the wake-up flag of the table "outbox".
func wakeFlagValue(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`SELECT last_value FROM outbox_wakeup`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// topology declares a durable direct exchange and a durable queue bound to it with the
// given routing keys, on the broker at url, and deletes both at the end of the test.
func topology(t *testing.T, url string, keys ...string) (exchange, queue string) {
	t.Helper()
	exchange, queue = testenv.Name(t, "ex"), testenv.Name(t, "q")
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", testenv.Redacted(url), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := ch.QueueBind(queue, k, exchange, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			return // a private broker may be gone already
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_ = ch.ExchangeDelete(exchange, false, false)
		}
	})
	return exchange, queue
}

// received is one message taken from the test queue.
type received struct {
	amqp.Delivery
	at time.Time
}

// sink consumes a queue on its own connection, acknowledging each message after
// recording it, and reconnects when the broker goes away.
type sink struct {
	mu     sync.Mutex
	msgs   []received
	counts map[string]int // message_id → deliveries
	cond   chan struct{}  // closed and replaced on every message
}

func consume(t *testing.T, url, queue string) *sink {
	t.Helper()
	s := &sink{counts: map[string]int{}, cond: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	first := make(chan error, 1)
	wg.Go(func() {
		once := false
		for ctx.Err() == nil {
			err := s.consumeOnce(ctx, url, queue, func() {
				if !once {
					once = true
					first <- nil
				}
			})
			if !once {
				once = true
				first <- err
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	if err := <-first; err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	return s
}

func (s *sink) consumeOnce(ctx context.Context, url, queue string, started func()) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	started()
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return nil
			}
			s.add(d)
			_ = d.Ack(false)
		}
	}
}

func (s *sink) add(d amqp.Delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, received{Delivery: d, at: time.Now()})
	s.counts[d.MessageId]++
	close(s.cond)
	s.cond = make(chan struct{})
}

// total returns the number of deliveries.
func (s *sink) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *sink) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[id]
}

func (s *sink) messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.msgs...)
}

// waitDistinct waits until n different message IDs arrived.
func (s *sink) waitDistinct(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		got, cond := len(s.counts), s.cond
		s.mu.Unlock()
		if got >= n {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("received %d distinct messages within %v, want %d", got, timeout, n)
		}
		select {
		case <-cond:
		case <-time.After(left):
		}
	}
}

// running is a relay started by startRelay.
type running struct {
	*Relay
	metrics *metrics.Metrics
	stop    func() error  // stops the relay (nil: clean drain), then its broker
	exited  chan struct{} // closed when Run returns
}

// startRelay runs a relay with its own broker connection until the test ends or stop
// is called. Each option is applied to the relay before it runs.
func startRelay(t *testing.T, db *sql.DB, dsn, amqpURL string, cfg Config, options ...func(*Relay)) *running {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	b := broker.New([]string{amqpURL}, broker.Config{Name: "sidebox-relay-test", Backoff: fastBackoff()}, log, m)
	bctx, bcancel := context.WithCancel(context.Background())
	var bwg sync.WaitGroup
	bwg.Go(func() { b.Run(bctx) })

	cfg.ListenDatabaseURL = dsn
	r, err := New(db, cfg, WithConnection(b), WithLogger(log), WithRegisterer(reg))
	if err != nil {
		bcancel()
		t.Fatalf("relay.New: %v", err)
	}
	for _, o := range options {
		o(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := r.Run(ctx)
		close(exited)
		result <- err
	}()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-result:
			case <-time.After(cfg.PublishTimeout + 30*time.Second):
				stopErr = fmt.Errorf("Run did not return after cancel")
			}
			bcancel()
			bwg.Wait()
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("relay stop: %v", err)
		}
	})
	return &running{Relay: r, metrics: m, stop: stop, exited: exited}
}

// counterReaches waits until the counter reaches want, then checks it did not pass it.
// The relay counts just after a batch's commit returns, so a test that saw the commit's
// effect in the database may look a moment too early.
func counterReaches(t *testing.T, c *prometheus.CounterVec, table pg.Table, name string, want float64) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, name+" to reach its final value", func() bool { return counter(t, c, table) >= want })
	if got := counter(t, c, table); got != want {
		t.Errorf("%s = %v, want %v", name, got, want)
	}
}

// counter reads a counter of the relay's table.
func counter(t *testing.T, c *prometheus.CounterVec, table pg.Table) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(table.String()).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// fastBackoff makes the test broker reconnect quickly.
func fastBackoff() backoff.Policy {
	return backoff.Policy{Base: 50 * time.Millisecond, Max: time.Second}
}

// outboxCount counts the rows of the table.
func outboxCount(t *testing.T, db *sql.DB, table pg.Table, where string) int {
	t.Helper()
	q := `SELECT count(*) FROM ` + table.String()
	if where != "" {
		q += ` WHERE ` + where
	}
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// backlog inserts n unkeyed rows for exchange/routing key and returns their IDs.
func backlog(t *testing.T, db *sql.DB, table pg.Table, exchange, key string, n int) []string {
	t.Helper()
	rows, err := db.Query(`INSERT INTO `+table.String()+` (exchange, routing_key, payload)
		SELECT $1, $2, convert_to('message ' || i, 'UTF8') FROM generate_series(1, $3) i
		RETURNING id::text`, exchange, key, n)
	if err != nil {
		t.Fatalf("insert backlog: %v", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(ids)
	return ids
}

// testConfig is a relay configuration for fast tests.
func testConfig(table pg.Table) Config {
	return Config{
		Table:           table.String(),
		PollInterval:    time.Second,
		RetryBackoff:    50 * time.Millisecond,
		RetryBackoffMax: 200 * time.Millisecond,
		PublishTimeout:  10 * time.Second,
	}
}

// claimArgs are the claim statement's parameters; cursor is nil or the walk's key.
func claimArgs(cfg Config, cursor any, maxVisits int, from *unkeyedCursor) []any {
	c := outboxdb.Claim{BatchSize: cfg.BatchSize, BatchBytes: cfg.BatchBytes, MaxVisits: maxVisits, From: from}
	if s, ok := cursor.(string); ok {
		c.Cursor = &s
	}
	return c.Args()
}
