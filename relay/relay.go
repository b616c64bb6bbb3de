// Package relay publishes the rows of an outbox table to RabbitMQ.
//
// A dispatcher claims batches of due rows with FOR UPDATE SKIP LOCKED, each in its own
// transaction, and hands them to workers. A worker publishes its whole batch pipelined on
// one confirm-mode channel (mandatory, persistent), waits for the confirms and returns,
// then in the same transaction deletes the rows the broker confirmed and records a failed
// attempt for the rows it returned or nacked, and commits. A row whose confirm never came
// (broker gone, timeout) is left as it was: it is published again later, so a crash or an
// outage can duplicate a message but never lose one, and burns no attempt.
//
// Rows with the same ordering key go out in seq order: a batch takes a key's run (its
// consecutive due rows from the first live one, its head) only together with the head,
// and publishes it pipelined on its one channel; a head that is in flight, retrying or
// dead holds back the rest of its key and nothing else. Of a run only the confirmed
// prefix is deleted (see run.go).
//
// The relay sleeps when it has caught up and is woken by a NOTIFY that writers send only
// while its wake-up flag is up (see the outbox migration and the dispatcher), by a
// finished batch whose key has a next row, by its poll interval, or when the next
// delayed or retrying row falls due. Under a steady stream the flag is down and writers
// pay nothing for notifications.
package relay

import (
	"cmp"
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
)

// Config tunes a Relay. Zero values take the defaults.
type Config struct {
	// Table is the outbox table, "name" or "schema.name" (lower-case SQL identifiers);
	// default "outbox".
	Table string

	// AMQPURLs are the RabbitMQ URLs (amqp:// or amqps://), tried in turn, on which the
	// relay keeps its own publishing connection while it runs. Required unless a
	// connection is given with WithConnection.
	AMQPURLs []string
	// AMQPTLS configures the relay's own amqps:// connections; nil: the system's roots,
	// no client certificate.
	AMQPTLS *tls.Config
	// ConnectionName is shown in the RabbitMQ management UI for the relay's own
	// connection; default "sidebox relay".
	ConnectionName string

	// ListenDatabaseURL is the PostgreSQL URL (lib/pq syntax) of the relay's LISTEN
	// connection, by which writers wake it within milliseconds. Give a direct
	// connection: notifications do not pass a transaction pooler. Empty: no LISTEN; the
	// relay polls, every few milliseconds while rows come and every PollInterval while
	// idle.
	ListenDatabaseURL string

	BatchSize       int           // rows per batch; default 500, at most 10000
	PollInterval    time.Duration // idle polling period; default 1s
	RetryBackoff    time.Duration // first retry delay of a failed row; default 1s
	RetryBackoffMax time.Duration // cap of the retry delay; default 5m
	PublishTimeout  time.Duration // longest wait for a batch's confirms; default 30s
	MaxAttempts     int           // failed publishes before a row is dead; default 10, at most 1000000
	Workers         int           // batches in flight at once; default 2
	// Prepare says whether the frequent queries are prepared on the server: "auto"
	// (default: unless the connection is pooled per transaction), "on" or "off".
	Prepare string
	// BatchBytes bounds the payload bytes of one batch; default 8 MiB. A row larger
	// than it goes alone, one such row at a time. Workers × BatchBytes, plus one row
	// above it, bounds the payloads in memory.
	BatchBytes int
	// MaxMessageBytes is the largest payload the broker takes (RabbitMQ's
	// max_message_size, which it does not announce); default 128 MiB, RabbitMQ's
	// default. A larger row is kept as dead at once, without being read or sent. A
	// broker that refuses a message as too large lowers it for the rest of Run.
	MaxMessageBytes int
	// Retention keeps published rows (published_at set) for this long for audit, then
	// purges them in small batches; 0 (the default): a row is deleted once confirmed.
	// Needs the outbox migration 0003. With Partitions "daily" it is the window after
	// which a day's partition is dropped; default DefaultPartitionedRetention.
	Retention time.Duration
	// Partitions is the layout of the table: "none" (the default) for the plain
	// table, "daily" for the table partitioned by day (the partitioned migration):
	// the relay keeps published rows, makes each day's partition ahead and drops the
	// partitions past Retention that hold no unpublished row. Run refuses a table of
	// the other layout.
	Partitions string
}

// Defaults.
const (
	DefaultBatchSize       = 500
	DefaultPollInterval    = time.Second
	DefaultRetryBackoff    = time.Second
	DefaultRetryBackoffMax = 5 * time.Minute
	DefaultPublishTimeout  = 30 * time.Second
	DefaultMaxAttempts     = 10
	DefaultWorkers         = 2
	DefaultBatchBytes      = 8 << 20
	DefaultMaxMessageBytes = 128 << 20

	// MaxBatchSize is the largest accepted BatchSize.
	MaxBatchSize = 10000
	// MaxWorkers is the largest accepted Workers.
	MaxWorkers = 64
	// MaxMaxAttempts is the largest accepted MaxAttempts.
	MaxMaxAttempts = 1000000
	// MinBatchBytes and MaxBatchBytes bound BatchBytes.
	MinBatchBytes = 1 << 10
	MaxBatchBytes = 1 << 30
	// MinMaxMessageBytes and MaxMaxMessageBytes bound MaxMessageBytes; RabbitMQ
	// accepts no max_message_size above 512 MiB.
	MinMaxMessageBytes = 1 << 10
	MaxMaxMessageBytes = 512 << 20
	// MinRetention is the shortest Retention above 0.
	MinRetention = time.Minute
	// DefaultPartitionedRetention is the Retention of a table partitioned by day when
	// none is given: three days' partitions are kept.
	DefaultPartitionedRetention = 72 * time.Hour
)

const (
	// settleTimeout is how long after raising the wake-up flag the relay claims once
	// more. A writer whose commit-time trigger read the flag just before it went up,
	// and whose commit became visible just after the relay's claim, sent no
	// notification; the settle claim picks its rows up. The window is the writer's
	// commit (its WAL flush), normally a few milliseconds.
	settleTimeout = 50 * time.Millisecond
	// pollMin is the shortest sleep between claims while wake-ups are polled: the
	// latency of a message written while rows are coming (see dispatcher.pollWait).
	pollMin = 5 * time.Millisecond
	// pollActive is how long after rows were last found the relay keeps polling every
	// pollMin: short stalls of the writers do not make it sleep long.
	pollActive = time.Second
	// dbTimeout bounds one claim and one settlement.
	dbTimeout = 10 * time.Second
	// drainMargin is added to PublishTimeout for the final settling of batches in
	// flight when Run is stopped.
	drainMargin = dbTimeout + 5*time.Second
)

func (c *Config) setDefaults() {
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.PollInterval = cmp.Or(c.PollInterval, DefaultPollInterval)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff)
	// A default cap never falls below a configured first delay.
	c.RetryBackoffMax = cmp.Or(c.RetryBackoffMax, max(DefaultRetryBackoffMax, c.RetryBackoff))
	c.PublishTimeout = cmp.Or(c.PublishTimeout, DefaultPublishTimeout)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.Workers = cmp.Or(c.Workers, DefaultWorkers)
	c.Prepare = cmp.Or(c.Prepare, string(pg.PrepareAuto))
	c.Table = cmp.Or(c.Table, outbox.DefaultTable)
	c.ConnectionName = cmp.Or(c.ConnectionName, "sidebox relay")
	c.BatchBytes = cmp.Or(c.BatchBytes, DefaultBatchBytes)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, DefaultMaxMessageBytes)
	if p, err := outboxdb.ParsePartitioning(c.Partitions); err == nil {
		c.Partitions = string(p) // else Validate says what is wrong
	}
	if c.Partitions == string(outboxdb.Daily) {
		c.Retention = cmp.Or(c.Retention, DefaultPartitionedRetention)
	}
}

// ConfigError reports an invalid Config field. Field is the Go field name (BatchSize,
// Workers ...), so that a caller can name its own setting.
type ConfigError struct {
	Field   string
	Problem string
}

func (e *ConfigError) Error() string { return "relay: " + e.Field + ": " + e.Problem }

// Validate reports every invalid setting, each a *ConfigError (joined with errors.Join
// when there are several). Zero values are invalid here; New fills them with the
// defaults before it validates.
func (c Config) Validate() error {
	var errs []error
	check := func(bad bool, field, format string, args ...any) {
		if bad {
			errs = append(errs, &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)})
		}
	}
	_, err := pg.ParseTable(c.Table)
	check(err != nil, "Table", "%v", err)
	for _, u := range c.AMQPURLs {
		err := checkAMQPURL(u)
		check(err != nil, "AMQPURLs", "%v", err)
	}
	check(c.BatchSize < 1 || c.BatchSize > MaxBatchSize, "BatchSize", "must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)
	check(c.PollInterval <= 0, "PollInterval", "must be positive, got %v", c.PollInterval)
	check(c.RetryBackoff <= 0, "RetryBackoff", "must be positive, got %v", c.RetryBackoff)
	check(c.RetryBackoffMax > 0 && c.RetryBackoffMax < c.RetryBackoff, "RetryBackoffMax", "must be at least RetryBackoff (%v), got %v", c.RetryBackoff, c.RetryBackoffMax)
	check(c.RetryBackoffMax <= 0, "RetryBackoffMax", "must be positive, got %v", c.RetryBackoffMax)
	check(c.PublishTimeout <= 0, "PublishTimeout", "must be positive, got %v", c.PublishTimeout)
	check(c.MaxAttempts < 1 || c.MaxAttempts > MaxMaxAttempts, "MaxAttempts", "must be between 1 and %d, got %d", MaxMaxAttempts, c.MaxAttempts)
	check(c.Workers < 1 || c.Workers > MaxWorkers, "Workers", "must be between 1 and %d, got %d", MaxWorkers, c.Workers)
	check(c.BatchBytes < MinBatchBytes || c.BatchBytes > MaxBatchBytes, "BatchBytes", "must be between %d and %d, got %d", MinBatchBytes, MaxBatchBytes, c.BatchBytes)
	check(c.MaxMessageBytes < MinMaxMessageBytes || c.MaxMessageBytes > MaxMaxMessageBytes, "MaxMessageBytes", "must be between %d and %d, got %d", MinMaxMessageBytes, MaxMaxMessageBytes, c.MaxMessageBytes)
	check(c.Retention < 0 || c.Retention > 0 && c.Retention < MinRetention, "Retention", "must be 0 (delete on confirm) or at least %v, got %v", MinRetention, c.Retention)
	_, err = pg.ParsePrepareMode(c.Prepare)
	check(err != nil, "Prepare", "%v", err)
	p, err := outboxdb.ParsePartitioning(c.Partitions)
	check(err != nil, "Partitions", "%v", err)
	check(p == outboxdb.Daily && c.Retention == 0, "Retention", "must be above 0 with a table partitioned by day (Partitions daily): it is the window after which a day's partition is dropped")
	return errors.Join(errs...)
}

// Relay publishes one outbox table. Create it with New and start it with Run.
type Relay struct {
	db     *sql.DB
	dsn    string
	broker Connection
	owned  *broker.Broker // the relay's own connection, run by Run; nil with WithConnection
	cfg    Config
	table  pg.Table
	log    *zap.Logger
	m      *metrics.Metrics
	q      queries
	stmts  *pg.Statements
	flag   *wakeFlag

	txSettings string // run first in every batch's transaction

	retry     backoff.Policy // schedule of failed rows
	reconnect backoff.Policy // after a database or channel error

	running     atomic.Bool
	dbOK        atomic.Bool // the last database round trip succeeded
	polled      atomic.Bool // no notification can wake the relay: it polls (see listen)
	probeFailed atomic.Bool // the last LISTEN probe timed out (and was logged)

	beats beats // heartbeat for `sidebox status` (heartbeat.go)

	claims atomic.Int64 // claim statements run; for tests
	peeks  atomic.Int64 // peeks run (wakeup.go); for tests
	idle   atomic.Bool  // asleep with nothing in flight and no settle claim due; for tests

	// afterDrain, when set (by tests), is called by a worker after the timeout of a
	// batch, once it drained the returns, with the confirms that were not in yet.
	afterDrain func(late []*amqp.DeferredConfirmation)
	// afterWarm, when set (by tests), is called when the statements were planned ahead.
	afterWarm func()

	mu       sync.Mutex
	suspects map[string]time.Time // rows in flight when a channel exception hit; published alone next time

	// batchCap bounds the rows of a batch after publish timeouts; 0: no bound but
	// BatchSize (see publishTimedOut).
	batchCap atomic.Int64

	// brokerMax is the largest message the broker said it takes, learned from its
	// refusal of a larger one; 0: not known.
	brokerMax atomic.Int64

	purgeEvery  time.Duration // pause between purges of kept rows (Retention), and between partition rounds
	partitioned bool          // Partitions daily: the table is partitioned by day
	warns       *warnLimiter  // WARN lines for failed rows, per exchange and routing key (explain.go)

	// large is held by the worker that has a batch above BatchBytes (one row, read
	// from the table in chunks) in memory: one such payload at a time.
	large chan struct{}

	trace *tracer // nil: no spans (see WithTracerProvider)
}

// New returns a relay for cfg.Table. db is the pool for claims and settlement. The relay
// publishes on its own connection to cfg.AMQPURLs, or on the one given with
// WithConnection. Without WithRegisterer its metrics go to a private registry.
func New(db *sql.DB, cfg Config, opts ...Option) (*Relay, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case db == nil:
		return nil, errors.New("relay: a database is required")
	case o.conn == nil && len(cfg.AMQPURLs) == 0:
		return nil, errors.New("relay: AMQPURLs or WithConnection is required")
	case o.conn != nil && len(cfg.AMQPURLs) > 0:
		return nil, errors.New("relay: give AMQPURLs or WithConnection, not both")
	}
	log := o.log
	if log == nil {
		log = zap.NewNop()
	}
	reg := o.reg
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := metrics.Register(reg)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	table, _ := pg.ParseTable(cfg.Table) // validated
	prepare, _ := pg.ParsePrepareMode(cfg.Prepare)
	conn, owned := o.conn, (*broker.Broker)(nil)
	if conn == nil {
		owned = broker.New(cfg.AMQPURLs, broker.Config{Name: cfg.ConnectionName, Role: broker.RolePublish, TLS: cfg.AMQPTLS}, log, m)
		conn = owned
	}
	q := newQueries(table)
	if cfg.Retention > 0 {
		q.KeepPublished()
	}
	log = log.With(zap.String("table", table.String()))
	return &Relay{
		db:          db,
		dsn:         cfg.ListenDatabaseURL,
		broker:      conn,
		owned:       owned,
		cfg:         cfg,
		table:       table,
		log:         log,
		stmts:       pg.NewStatements(db, prepare, "SIDEBOX_DATABASE_PREPARE (relay.Config.Prepare)", log),
		m:           m,
		q:           q,
		flag:        &wakeFlag{db: db, q: q.flag, name: table.Ident("_wakeup")},
		txSettings:  claimSettings(cfg.PublishTimeout),
		retry:       backoff.Policy{Base: cfg.RetryBackoff, Max: cfg.RetryBackoffMax},
		reconnect:   backoff.Database(),
		suspects:    map[string]time.Time{},
		large:       make(chan struct{}, 1),
		purgeEvery:  purgeEvery,
		partitioned: cfg.Partitions == string(outboxdb.Daily),
		beats:       newBeats(),
		trace:       newTracer(o.tp),
		warns:       newWarnLimiter(failureWarnEvery, time.Now),
	}, nil
}

// Ready reports whether the relay is running with the database and the broker
// reachable. A LISTEN connection that is down or gets no notifications does not make
// it unready: wake-ups are polled meanwhile (WakeupsPolled says so).
func (r *Relay) Ready() bool {
	return r.running.Load() && r.dbOK.Load() && r.broker.Ready()
}

// WakeupsPolled reports whether the relay polls for new rows because notifications do
// not reach it (LISTEN connection down, or through a transaction pooler).
func (r *Relay) WakeupsPolled() bool { return r.polled.Load() }

// Run relays until ctx is cancelled, then stops claiming, lets the batches in flight
// finish (confirms awaited, rows settled; bounded by PublishTimeout) and returns nil.
// Outages of the database or the broker are waited out, never returned. A table laid
// out otherwise than Config.Partitions says is: Run returns a *ConfigError on
// Partitions before it claims anything.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("relay: Run is already running")
	}
	defer r.running.Store(false)
	defer r.stmts.Close()
	if r.owned != nil {
		// The relay's own connection outlives ctx: the batches in flight when it is
		// cancelled still need their confirms.
		bctx, stopBroker := context.WithCancel(context.WithoutCancel(ctx))
		var bwg sync.WaitGroup
		bwg.Go(func() { r.owned.Run(bctx) })
		stopDrain := context.AfterFunc(ctx, r.owned.Drain)
		defer func() {
			stopDrain()
			stopBroker()
			bwg.Wait()
		}()
	}
	r.log.Info("relay started",
		zap.Int("batch_size", r.cfg.BatchSize), zap.Int("batch_bytes", r.cfg.BatchBytes), zap.Int("workers", r.cfg.Workers),
		zap.Duration("poll_interval", r.cfg.PollInterval), zap.Int("max_attempts", r.cfg.MaxAttempts))

	if err := r.checkLayout(ctx); err != nil {
		return err
	}
	r.checkAutovacuum(ctx)

	var hb sync.WaitGroup
	hb.Go(func() { r.heartbeat(ctx) })
	defer hb.Wait()

	wake := make(chan struct{}, 1)
	stopListener := r.listen(wake)
	defer stopListener()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	r.setDBOK(r.db.PingContext(pctx) == nil)
	cancel()

	d := &dispatcher{
		r:    r,
		idle: make(chan *worker, r.cfg.Workers),
		wake: wake,
		done: make(chan struct{}, 1),
	}
	workers := make([]*worker, r.cfg.Workers)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{r: r, d: d, id: i, in: make(chan *batch, 1)}
		workers[i] = w
		wg.Go(func() { w.run(ctx) })
	}
	switch {
	case r.partitioned:
		wg.Go(func() { r.maintainPartitions(ctx) })
	case r.cfg.Retention > 0:
		wg.Go(func() { r.purge(ctx) })
	}
	d.run(ctx)

	// Stopping: no more claims. Workers finish what they hold, then leave.
	for _, w := range workers {
		close(w.in)
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		r.flag.wait()
		close(finished)
	}()
	grace := r.cfg.PublishTimeout + drainMargin
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-finished:
		r.log.Info("relay stopped")
		return nil
	case <-t.C:
		return fmt.Errorf("relay: batches in flight did not finish within %v; their rows stay in the outbox and will be published again", grace)
	}
}

// setDBOK records whether the database answered.
func (r *Relay) setDBOK(ok bool) {
	if r.dbOK.Swap(ok) != ok || ok {
		r.updateUp()
	}
}

func (r *Relay) updateUp() {
	v := 0.0
	if r.dbOK.Load() {
		v = 1
	}
	r.m.Up.WithLabelValues(metrics.DependencyPostgres).Set(v)
}

// isSuspect reports whether the row was in flight when a channel exception struck.
func (r *Relay) isSuspect(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.suspects[id]
	return ok
}

// addSuspects remembers rows to publish one at a time next time, to find the one that
// makes the broker close the channel. Entries that were never claimed again (another
// relay took the row) expire.
func (r *Relay) addSuspects(ids []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for id, at := range r.suspects {
		if now.Sub(at) > 10*time.Minute {
			delete(r.suspects, id)
		}
	}
	for _, id := range ids {
		r.suspects[id] = now
	}
}

func (r *Relay) dropSuspect(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.suspects, id)
}

// wakeFlag writes the table's wake-up sequence: 1 while the relay sleeps (the first
// writer to commit then takes it and notifies), 0 while it works (writers do not). Setting is synchronous, because
// the relay must claim once more after it; clearing is asynchronous, off the hot path,
// but never overtakes a later set.
type wakeFlag struct {
	db   *sql.DB
	q    [2]string // lower, raise
	name string

	mu  sync.Mutex // serialises the writes
	gen atomic.Uint64
	wg  sync.WaitGroup
}

func (f *wakeFlag) set(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen.Add(1)
	if _, err := f.db.ExecContext(ctx, f.q[1]); err != nil {
		return fmt.Errorf("raise wake-up flag %s: %w", f.name, err)
	}
	return nil
}

func (f *wakeFlag) clear(ctx context.Context, log *zap.Logger) {
	g := f.gen.Add(1)
	f.wg.Go(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.gen.Load() != g {
			return // a later write supersedes this one
		}
		ctx, cancel := context.WithTimeout(ctx, dbTimeout)
		defer cancel()
		if _, err := f.db.ExecContext(ctx, f.q[0]); err != nil {
			// Writers keep notifying until the next write; harmless.
			log.Debug("cannot lower the wake-up flag", errField(err))
		}
	})
}

func (f *wakeFlag) wait() { f.wg.Wait() }

// checkAutovacuum warns once, at start, when autovacuum does not keep the table's
// statistics: without them the planner takes a large backlog for a few rows, and each
// claim sorts the whole backlog instead of reading the first rows of an index
// (docs/DESIGN.md, "Cost at any backlog").
func (r *Relay) checkAutovacuum(ctx context.Context) {
	dbctx, cancel := context.WithTimeout(ctx, dbTimeout)
	why, err := outboxdb.Autovacuum(dbctx, r.db, r.table)
	cancel()
	switch {
	case err != nil:
		r.log.Debug("cannot read the autovacuum settings", errField(err))
	case why != "":
		r.log.Warn("autovacuum does not analyse the outbox table: the claim's plans rely on its statistics, and without them a backlog of a few hundred thousand rows drains at a small fraction of the usual rate",
			zap.String("reason", why), zap.String("hint", "enable autovacuum, or run ANALYZE "+r.table.String()+" after large changes (an outage's backlog)"))
	}
}
