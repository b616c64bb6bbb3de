package chaos

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// schema is the service's own tables, next to sidebox's outbox and inbox.
//
// keys holds one counter per ordering key: a writer bumps it in its transaction (the
// row lock serialises writers of one key, as the contract asks), so the committed
// orders of a key are numbered 1, 2, 3 ... in commit order. shipments is the effect;
// order_id is deliberately not unique, so an effect applied twice shows.
const schema = `
CREATE TABLE keys (key text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid   NOT NULL UNIQUE,
    key        text,
    n          bigint
);
CREATE TABLE shipments (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   bigint NOT NULL,
    message_id text   NOT NULL,
    key        text,
    n          bigint
);`

// event is the body of every message the writer sends.
type event struct {
	OrderID int64  `json:"order_id"`
	Key     string `json:"key,omitempty"`
	N       int64  `json:"n,omitempty"`
	Pad     string `json:"pad,omitempty"` // makes large payloads
}

// Routing of the scenario's exchange: routingKey is bound to the queue, unroutedKey
// is not (its messages are returned to the relay).
const (
	routingKey  = "order.created"
	unroutedKey = "nowhere.created"
)

// servers are the private servers of one run, shared by its scenarios one at a time.
type servers struct {
	full bool // the full form: every failed check fails the test, known defects too
	pg   *testenv.Postgres
	mq   *testenv.RabbitMQ
	bin  string // the sidebox binary
}

// rig is one scenario's world: its own database on the private PostgreSQL server, its
// own exchange and queue on a broker, and the sidebox processes and processors it runs.
type rig struct {
	t     *testing.T
	ctx   context.Context // the scenario's deadline
	srv   *servers
	db    *sql.DB // the service's database, direct
	dbURL string

	// What the sidebox processes connect to (a proxy or a list of URLs, or the same
	// as the direct ones).
	procDBURL, procAMQPURL string
	// What the test itself uses to declare and inspect the queue: tried in turn.
	amqpURLs []string

	exchange, queue string
	queueArgs       amqp.Table
	env             []string // extra environment of every sidebox process
	relayEnv        []string // extra environment of relays only (after env: it wins)

	mu      sync.Mutex
	inboxes []*testenv.Sidebox // every inbox-consuming process started, for duplicates
	relays  []*testenv.Sidebox // relay processes currently running
	started []*testenv.Sidebox // every sidebox process started, for the log summary
	dupes   float64            // duplicates counted by inbox processes already gone
	rejects float64            // deliveries rejected by inbox processes already gone
	procs   []*processor
	notes   []string
	failed  []string // scenario checks that failed, for the notes and t.Errorf
	crashed bool     // a process or server crashed: duplicates are expected
}

// rigOption adjusts a rig before its database and queue are created.
type rigOption func(*rig)

// withQueueArgs declares the queue with arguments (x-queue-type=quorum).
func withQueueArgs(args amqp.Table) rigOption { return func(r *rig) { r.queueArgs = args } }

// withBroker points everything at other brokers (a cluster): the processes get urls
// as one comma-separated SIDEBOX_AMQP_URL.
func withBroker(urls []string) rigOption {
	return func(r *rig) {
		r.amqpURLs = urls
		r.procAMQPURL = strings.Join(urls, ",")
	}
}

// newRig creates the scenario's database (sidebox migrations, then the service's
// tables), its exchange (topic, durable) and its durable queue bound to routingKey.
func newRig(t *testing.T, ctx context.Context, srv *servers, keys int, opts ...rigOption) *rig {
	t.Helper()
	r := &rig{t: t, ctx: ctx, srv: srv,
		exchange: testenv.Name(t, "chaos_orders"), queue: testenv.Name(t, "chaos_shipping")}
	r.amqpURLs = []string{srv.mq.URL()}
	r.procAMQPURL = srv.mq.URL()
	for _, o := range opts {
		o(r)
	}

	name := testenv.Name(t, "chaos")
	admin, err := sql.Open("postgres", srv.pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	u, _ := url.Parse(srv.pg.URL())
	u.Path = "/" + name
	r.dbURL = u.String()
	r.procDBURL = r.dbURL
	if r.db, err = sql.Open("postgres", r.dbURL); err != nil {
		t.Fatal(err)
	}
	r.db.SetMaxOpenConns(20)
	t.Cleanup(func() { _ = r.db.Close() })

	r.sidebox("migrate", "up")
	if _, err := r.db.ExecContext(ctx, schema); err != nil {
		t.Fatalf("create service tables: %v", err)
	}
	for i := range keys {
		if _, err := r.db.ExecContext(ctx, `INSERT INTO keys (key) VALUES ($1)`, keyName(i)); err != nil {
			t.Fatal(err)
		}
	}

	err = r.withChannel(func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(r.exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange: %w", err)
		}
		if _, err := ch.QueueDeclare(r.queue, true, false, false, false, r.queueArgs); err != nil {
			return fmt.Errorf("declare queue: %w", err)
		}
		return ch.QueueBind(r.queue, "order.*", r.exchange, false, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func keyName(i int) string { return fmt.Sprintf("k%02d", i) }

// sidebox runs a short sidebox command against the scenario's database.
func (r *rig) sidebox(args ...string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.srv.bin, args...)
	cmd.Env = append(cleanEnv(), "SIDEBOX_DATABASE_URL="+r.dbURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		r.t.Fatalf("sidebox %v: %v\n%s", args, err, out)
	}
}

// processEnv is the environment of a relay, inbox or run process: short timeouts,
// intervals and retry delays so that a scenario sees faults handled within seconds.
// A row that fails every attempt is dead after about 15 s (10 attempts, backoff 200 ms
// doubling to 2 s) instead of about 8 minutes with the defaults.
func (r *rig) processEnv(extra ...string) []string {
	env := []string{
		"SIDEBOX_DATABASE_URL=" + r.procDBURL,
		"SIDEBOX_AMQP_URL=" + r.procAMQPURL,
		"SIDEBOX_POLL_INTERVAL=200ms",
		"SIDEBOX_PUBLISH_TIMEOUT=5s",
		"SIDEBOX_SHUTDOWN_TIMEOUT=10s",
		"SIDEBOX_STATUS_INTERVAL=1s",
		"SIDEBOX_MAX_ATTEMPTS=10",
		"SIDEBOX_RETRY_BACKOFF=200ms",
		"SIDEBOX_RETRY_BACKOFF_MAX=2s",
	}
	env = append(env, r.env...)
	return append(env, extra...)
}

// startRelay starts a `sidebox relay` and waits until it is ready.
func (r *rig) startRelay(wait bool) *testenv.Sidebox {
	r.t.Helper()
	p := testenv.StartSidebox(r.t, r.srv.bin, "relay", r.processEnv(r.relayEnv...))
	if wait {
		p.WaitReady(r.ctx, r.t)
	}
	r.mu.Lock()
	r.relays = append(r.relays, p)
	r.started = append(r.started, p)
	r.mu.Unlock()
	return p
}

// startInbox starts a `sidebox inbox` on the scenario's queue (or, with command "run",
// a `sidebox run` doing both sides) and waits until it is ready.
func (r *rig) startInbox(command string) *testenv.Sidebox {
	r.t.Helper()
	p := testenv.StartSidebox(r.t, r.srv.bin, command, r.processEnv("SIDEBOX_INBOX_QUEUE="+r.queue))
	p.WaitReady(r.ctx, r.t)
	r.mu.Lock()
	r.inboxes = append(r.inboxes, p)
	r.started = append(r.started, p)
	if command == "run" {
		r.relays = append(r.relays, p)
	}
	r.mu.Unlock()
	return p
}

// stopInbox stops inbox process p with SIGTERM, counting its duplicates first.
func (r *rig) stopInbox(p *testenv.Sidebox) {
	r.t.Helper()
	r.collectInboxCounters(p)
	if err := p.Stop(30 * time.Second); err != nil {
		r.fail("%v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, q := range r.inboxes {
		if q == p {
			r.inboxes = append(r.inboxes[:i], r.inboxes[i+1:]...)
			break
		}
	}
}

// collectInboxCounters adds an inbox process's duplicates and rejections to the
// scenario's, just before it stops.
func (r *rig) collectInboxCounters(p *testenv.Sidebox) {
	r.t.Helper()
	if d, ok := p.Counter("sidebox_inbox_duplicates_total"); ok {
		r.dupes += d
	} else {
		r.fail("%s: /metrics unreadable before stop; its duplicates are not counted", p.Name)
	}
	rj, _ := p.Counter("sidebox_inbox_rejected_total")
	r.rejects += rj
}

// killInbox SIGKILLs inbox process p (its duplicates read just before) and starts
// another in its place.
func (r *rig) killInbox(p *testenv.Sidebox) {
	r.t.Helper()
	r.collectInboxCounters(p)
	p.Kill(r.t)
	r.crashed = true
	r.mu.Lock()
	for i, q := range r.inboxes {
		if q == p {
			r.inboxes = append(r.inboxes[:i], r.inboxes[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	r.startInbox("inbox")
}

// killRelay SIGKILLs relay i and starts another in its place (not waiting for it).
func (r *rig) killRelay(i int) {
	r.t.Helper()
	r.mu.Lock()
	p := r.relays[i]
	r.mu.Unlock()
	p.Kill(r.t)
	r.crashed = true
	np := testenv.StartSidebox(r.t, r.srv.bin, "relay", r.processEnv(r.relayEnv...))
	r.mu.Lock()
	r.relays[i] = np
	r.started = append(r.started, np)
	r.mu.Unlock()
}

// processor is an inbox.Processor of the scenario running in this process.
type processor struct {
	stop context.CancelFunc
	done chan error
}

// startProcessors starts n processors; ordered ones process a key one row at a time.
func (r *rig) startProcessors(n int, ordered bool) {
	r.t.Helper()
	for range n {
		p, err := inbox.NewProcessor(r.db, inbox.ProcessorConfig{
			Consumer:        r.queue,
			BatchSize:       64,
			PollInterval:    50 * time.Millisecond,
			MaxAttempts:     3,
			RetryBackoff:    100 * time.Millisecond,
			RetryBackoffMax: time.Second,
			Ordered:         ordered,
		}, ship)
		if err != nil {
			r.t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(r.ctx)
		pr := &processor{stop: cancel, done: make(chan error, 1)}
		go func() { pr.done <- p.Run(ctx) }()
		r.procs = append(r.procs, pr)
	}
}

// ship is the effect: one shipment per order, in the transaction that marks the inbox
// row processed.
func ship(ctx context.Context, tx *sql.Tx, msg inbox.Message) error {
	var ev event
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("decode %s: %w", msg.MessageID, err)
	}
	if ev.OrderID == 0 {
		return fmt.Errorf("message %s has no order_id", msg.MessageID)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO shipments (order_id, message_id, key, n) VALUES ($1, $2, $3, $4)`,
		ev.OrderID, msg.MessageID, nullable(ev.Key), ev.N)
	return err
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// load is the writer's traffic.
type load struct {
	count    int           // transactions to attempt
	rate     int           // per second; 0 = as fast as possible
	workers  int           // concurrent writers; default 4
	keys     int           // ordering keys in use (rows in keys); 0 = no ordering key
	rollback float64       // fraction rolled back on purpose after writing the outbox row
	unrouted float64       // fraction sent with a routing key nothing is bound to (dead on purpose)
	pad      int           // payload padding, bytes
	deadline time.Duration // stop writing after this long even if count is not reached
}

// writer places orders; each is an orders row and its outbox row in one transaction.
type writer struct {
	attempted, committed, rolledBack, failed atomic.Int64
	done                                     chan struct{}
}

// write starts the writer in the background. Errors (a database restarting) are
// retried after a pause: the orders table, not the writer, says what committed.
func (r *rig) write(l load) *writer {
	if l.workers == 0 {
		l.workers = 4
	}
	if l.deadline == 0 {
		l.deadline = time.Minute
	}
	w := &writer{done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(r.ctx, l.deadline)
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range l.workers {
		wg.Go(func() {
			for range jobs {
				for ctx.Err() == nil {
					err := r.placeOrder(ctx, l, w)
					if err == nil {
						break
					}
					w.failed.Add(1)
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		})
	}
	go func() {
		defer close(w.done)
		defer cancel()
		var tick *time.Ticker
		if l.rate > 0 {
			tick = time.NewTicker(time.Second / time.Duration(l.rate))
			defer tick.Stop()
		}
	feed:
		for range l.count {
			if tick != nil {
				select {
				case <-tick.C:
				case <-ctx.Done():
					break feed
				}
			}
			select {
			case jobs <- struct{}{}:
			case <-ctx.Done():
				break feed
			}
		}
		close(jobs)
		wg.Wait()
	}()
	return w
}

// wait waits for the writer to finish.
func (w *writer) wait() { <-w.done }

// placeOrder writes one order in one transaction and commits it, or rolls it back on
// purpose after the outbox row was written.
func (r *rig) placeOrder(ctx context.Context, l load, w *writer) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var (
		key string
		n   int64
	)
	rk := routingKey
	unrouted := l.unrouted > 0 && rand.Float64() < l.unrouted
	if unrouted {
		rk = unroutedKey // no key: a dead row must not block a key's later rows
	} else if l.keys > 0 {
		key = keyName(rand.IntN(l.keys))
		if err := tx.QueryRowContext(ctx, `UPDATE keys SET n = n + 1 WHERE key = $1 RETURNING n`, key).Scan(&n); err != nil {
			return err
		}
	}
	id := uuid.New()
	var orderID int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO orders (message_id, key, n) VALUES ($1, $2, $3) RETURNING id`,
		id, nullable(key), n).Scan(&orderID); err != nil {
		return err
	}
	body, err := json.Marshal(event{OrderID: orderID, Key: key, N: n, Pad: strings.Repeat("x", l.pad)})
	if err != nil {
		return err
	}
	if _, err := outbox.Write(ctx, tx, outbox.Message{ID: id, Exchange: r.exchange, RoutingKey: rk,
		Type: "order.created", OrderingKey: key, Payload: body}); err != nil {
		return err
	}
	w.attempted.Add(1)
	if rand.Float64() < l.rollback {
		w.rolledBack.Add(1)
		return tx.Rollback()
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.committed.Add(1)
	return nil
}

// withChannel runs f on a channel of a fresh connection to the first broker that
// answers.
func (r *rig) withChannel(f func(*amqp.Channel) error) error {
	var errs []error
	for _, u := range r.amqpURLs {
		conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ch, err := conn.Channel()
		if err == nil {
			err = f(ch)
		}
		_ = conn.Close()
		return err
	}
	return fmt.Errorf("no broker answered: %w", errors.Join(errs...))
}

// queueDepth returns the messages ready in the queue.
func (r *rig) queueDepth() (int, error) {
	var n int
	err := r.withChannel(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(r.queue, true, false, false, false, r.queueArgs)
		n = q.Messages
		return err
	})
	return n, err
}

// counts is what the database says at one moment.
type counts struct {
	committed, delivered, lost, phantom, doubled        int
	outboxLive, outboxDead, inboxUnprocessed, inboxDead int
}

const countSQL = `
SELECT
  (SELECT count(*) FROM orders),
  (SELECT count(DISTINCT s.order_id) FROM shipments s JOIN orders o ON o.id = s.order_id),
  (SELECT count(*) FROM orders o
    WHERE NOT EXISTS (SELECT 1 FROM shipments s WHERE s.order_id = o.id)
      AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.id = o.message_id AND x.dead_at IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = o.message_id::text AND i.dead_at IS NOT NULL)),
  (SELECT count(DISTINCT s.order_id) FROM shipments s WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = s.order_id)),
  (SELECT count(*) - count(DISTINCT order_id) FROM shipments),
  (SELECT count(*) FROM outbox WHERE dead_at IS NULL),
  (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL),
  (SELECT count(*) FROM inbox WHERE processed_at IS NULL AND dead_at IS NULL),
  (SELECT count(*) FROM inbox WHERE dead_at IS NOT NULL)`

func (r *rig) count(ctx context.Context) (counts, error) {
	var c counts
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := r.db.QueryRowContext(ctx, countSQL).Scan(&c.committed, &c.delivered, &c.lost, &c.phantom, &c.doubled,
		&c.outboxLive, &c.outboxDead, &c.inboxUnprocessed, &c.inboxDead)
	return c, err
}

// settle waits until nothing is left to do — no live outbox row, no message in the
// queue, no unprocessed inbox row, no committed order without effect — twice in a row,
// or until timeout; what is missing then is lost.
func (r *rig) settle(timeout time.Duration) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	quiet := 0
	var last counts
	for quiet < 2 {
		c, err := r.count(ctx)
		depth, qerr := r.queueDepth()
		if err == nil && qerr == nil && c.outboxLive == 0 && c.inboxUnprocessed == 0 && c.lost == 0 && depth == 0 {
			quiet++
		} else {
			quiet = 0
		}
		if err == nil {
			last = c
		}
		select {
		case <-ctx.Done():
			r.note("did not settle within %s: %d live outbox rows, %d unprocessed inbox rows, %d committed orders without effect",
				timeout, last.outboxLive, last.inboxUnprocessed, last.lost)
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// note adds a line under the table for this scenario.
func (r *rig) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// knownDefect names the branch that fixes a defect a check is known to find on the
// main branch of today, or "". In the short form (`go test`, `make test`) such a
// failure is listed under the table but does not fail the test, so that main stays
// green until the fix is merged; the full form (`make chaos`) fails on it. Delete the
// case when its fix is merged.
func knownDefect(check string) string {
	switch check {
	// None today. Merged since the suite was written: the memory alarm no longer
	// stops the inbox of `sidebox run` (branch broker).
	}
	return ""
}

// failCheck records a failed check that may be a known defect (see knownDefect).
func (r *rig) failCheck(check, format string, args ...any) {
	r.t.Helper()
	if branch := knownDefect(check); branch != "" && !r.srv.full {
		msg := fmt.Sprintf(format, args...)
		r.t.Logf("known defect (fix on branch %s): %s", branch, msg)
		r.note("FAILED, known defect (fix on branch %s): %s", branch, msg)
		return
	}
	r.fail(format, args...)
}

// fail records a failed scenario check: a note, and the test fails.
func (r *rig) fail(format string, args ...any) {
	r.t.Helper()
	msg := fmt.Sprintf(format, args...)
	r.t.Error(msg)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, msg)
}

// stopAll stops the processors and every sidebox process with SIGTERM (reading the
// inbox counters just before); a process that does not exit cleanly fails the check
// that nothing hangs.
func (r *rig) stopAll() {
	r.t.Helper()
	for _, p := range r.procs {
		p.stop()
		if err := <-p.done; err != nil {
			r.fail("processor: %v", err)
		}
	}
	r.procs = nil
	r.mu.Lock()
	procs := append([]*testenv.Sidebox(nil), r.relays...)
	for _, p := range r.inboxes {
		if !contains(procs, p) {
			procs = append(procs, p)
		}
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if contains(r.inboxes, p) {
			r.collectInboxCounters(p)
		}
		wg.Go(func() {
			if err := p.Stop(30 * time.Second); err != nil {
				r.fail("%v", err)
			}
		})
	}
	wg.Wait()
	r.relays, r.inboxes = nil, nil
}

func contains(ps []*testenv.Sidebox, p *testenv.Sidebox) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// finish stops everything, counts, checks the invariants, and returns the row.
func (r *rig) finish(name string) row {
	r.t.Helper()
	r.stopAll()
	c, err := r.count(context.Background())
	if err != nil {
		r.t.Fatalf("count: %v", err)
	}
	dupes := int(r.dupes)
	rw := row{
		scenario: name, committed: c.committed, delivered: c.delivered, lost: c.lost, phantom: c.phantom,
		duplicates: dupes, absorbed: dupes - c.doubled, dead: c.outboxDead + c.inboxDead + int(r.rejects),
	}
	rw.notes = append(rw.notes, r.deadReasons(c, int(r.rejects))...)
	if c.lost > 0 {
		r.fail("%d committed orders lost (no effect, not dead); e.g. %s", c.lost, r.lostSample())
	}
	if c.phantom > 0 {
		r.fail("%d effects of orders that never committed", c.phantom)
	}
	if c.doubled > 0 {
		r.fail("%d effects applied twice", c.doubled)
	}
	if dupes > 0 && !r.crashed {
		r.note("%d duplicates without a crash", dupes)
	}
	rw.notes = append(rw.notes, r.logSummary())
	r.mu.Lock()
	rw.notes = append(rw.notes, r.notes...)
	rw.failed = append(rw.failed, r.failed...)
	r.mu.Unlock()
	return rw
}

// logEvents are warnings of the sidebox processes worth counting in a scenario's notes.
func logEvents() []struct{ text, what string } {
	return []struct{ text, what string }{
		{"confirms did not arrive in time", "publish timeouts"},
		{"the broker closed the publishing channel", "publishing channels closed by the broker"},
		{"lost RabbitMQ connection", "broker connections lost"},
		{"cannot settle a batch", "batches not settled"},
		{"inbox consumer interrupted", "inbox consumer interruptions"},
		{"cannot store inbox batch", "inbox batches not stored"},
	}
}

// logSummary counts logEvents over the logs of every sidebox process of the scenario.
func (r *rig) logSummary() string {
	r.mu.Lock()
	procs := append([]*testenv.Sidebox(nil), r.started...)
	r.mu.Unlock()
	events := logEvents()
	counts := make([]int, len(events))
	for _, p := range procs {
		log := p.Log()
		for i, e := range events {
			counts[i] += strings.Count(log, e.text)
		}
	}
	var parts []string
	for i, e := range events {
		if counts[i] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", e.what, counts[i]))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "none of the warnings counted")
	}
	return fmt.Sprintf("sidebox logs (%d processes): %s", len(procs), strings.Join(parts, ", "))
}

// deadReasons lists why messages are dead, grouped.
func (r *rig) deadReasons(c counts, rejected int) []string {
	var out []string
	for _, q := range []struct{ what, sql string }{
		{"outbox dead", `SELECT coalesce(last_error, ''), count(*) FROM outbox WHERE dead_at IS NOT NULL GROUP BY 1 ORDER BY 2 DESC`},
		{"inbox dead", `SELECT coalesce(last_error, ''), count(*) FROM inbox WHERE dead_at IS NOT NULL GROUP BY 1 ORDER BY 2 DESC`},
	} {
		rows, err := r.db.Query(q.sql)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", q.what, err))
			continue
		}
		for rows.Next() {
			var reason string
			var n int
			if err := rows.Scan(&reason, &n); err == nil {
				out = append(out, fmt.Sprintf("%s ×%d: %s", q.what, n, shorten(reason, 160)))
			}
		}
		_ = rows.Close()
	}
	if rejected > 0 {
		out = append(out, fmt.Sprintf("inbox rejected ×%d: delivery without message_id", rejected))
	}
	return out
}

// lostSample names a few lost orders with where their message was last seen.
func (r *rig) lostSample() string {
	rows, err := r.db.Query(`
SELECT o.id, o.message_id,
  coalesce((SELECT 'outbox attempts=' || x.attempts || ' last_error=' || coalesce(x.last_error, '-') FROM outbox x WHERE x.id = o.message_id),
           (SELECT 'inbox unprocessed attempts=' || i.attempts FROM inbox i WHERE i.message_id = o.message_id::text),
           'neither in the outbox nor in the inbox')
FROM orders o
WHERE NOT EXISTS (SELECT 1 FROM shipments s WHERE s.order_id = o.id)
  AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.id = o.message_id AND x.dead_at IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = o.message_id::text AND i.dead_at IS NOT NULL)
ORDER BY o.id LIMIT 3`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var id int64
		var mid, where string
		if err := rows.Scan(&id, &mid, &where); err == nil {
			parts = append(parts, fmt.Sprintf("order %d (%s): %s", id, mid, shorten(where, 120)))
		}
	}
	return strings.Join(parts, "; ")
}

// checkOrder checks per-key order at the effect: each key's shipments, in the order
// they were made, carry n = 1, 2, 3 ... for the key's committed orders.
func (r *rig) checkOrder() {
	r.t.Helper()
	rows, err := r.db.Query(`SELECT key, n FROM shipments WHERE key IS NOT NULL ORDER BY seq`)
	if err != nil {
		r.t.Fatal(err)
	}
	defer rows.Close()
	last := map[string]int64{}
	reordered := 0
	var first string
	for rows.Next() {
		var key string
		var n int64
		if err := rows.Scan(&key, &n); err != nil {
			r.t.Fatal(err)
		}
		if n <= last[key] {
			reordered++
			if first == "" {
				first = fmt.Sprintf("key %s: n=%d after n=%d", key, n, last[key])
			}
		}
		last[key] = max(last[key], n)
	}
	if reordered > 0 {
		r.failCheck("order", "per-key order broken at the effect: %d shipments came after a later one of their key (first: %s)", reordered, first)
	} else {
		r.note("per-key order held at the effect over %d keys", len(last))
	}
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// cleanEnv is the test's environment without SIDEBOX_ variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDEBOX_") {
			env = append(env, kv)
		}
	}
	sort.Strings(env)
	return env
}
