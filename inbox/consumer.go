package inbox

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
)

// Reasons of rejected deliveries (label reason of sidebox_inbox_rejected_total).
const (
	RejectNoMessageID      = "no_message_id"      // message_id property absent or empty
	RejectInvalidMessageID = "invalid_message_id" // not valid UTF-8, or contains U+0000
	RejectUnstorable       = "unstorable"         // the database refused the row itself (data error)
	RejectTooLarge         = "too_large"          // larger than one statement to PostgreSQL may carry
)

// Consumer is the sidecar's inbox consumer: it stores the deliveries of one queue in
// the inbox table, deduplicated by (consumer, message_id), and acknowledges them only
// after they committed.
//
// Deliveries flow through a pipeline: one goroutine gathers them into batches, Workers
// goroutines store batches concurrently (each one INSERT, its own transaction), and one
// goroutine acknowledges committed batches strictly in delivery order, with one multiple
// ack covering every consecutive committed batch. Rows whose ordering key is in an earlier
// batch not yet committed are stored only after that batch committed (the batch's other
// rows first), so that rows of one key get their seq, and become visible, in delivery
// order.
type Consumer struct {
	db      *sql.DB
	broker  Connection
	owned   *broker.Broker // the consumer's own connection, run by Run; nil with WithConnection
	cfg     ConsumerConfig
	log     *zap.Logger
	backoff backoff.Policy // of the database and the broker channel

	insertSQL string
	stmts     *pg.Statements // the insert, prepared lazily (the database may be down at start) where that is safe

	consuming atomic.Bool // a consume session is open
	interrupt notReady    // why the last session ended, for readiness (ready.go)
	dbOK      atomic.Bool // the last database round trip worked
	sizeSeen  int         // decaying maximum of payload sizes (see window); used by one session at a time
	oversize  sync.Mutex  // held while storing a batch above BatchBytes (a large message alone)
	seqs      seqTracker  // highest x-outbox-seq per key; used by one session at a time

	received, stored, duplicates prometheus.Counter
	rejected                     *prometheus.CounterVec
	batchDuration                prometheus.Observer
	prefetch                     prometheus.Gauge
	seqBack                      prometheus.Counter // x-outbox-seq regressions

	// statementLimit, when set (tests only), replaces maxStatementBytes.
	statementLimit int

	// prefetchChanged, when set (tests only), gets each new prefetch count of a session.
	prefetchChanged func(count int)
	lastPrefetch    int // the prefetch count of the last session

	// afterCommit, when set (tests only), runs after a batch committed and before it is
	// acknowledged.
	afterCommit func()
	// beforeStore, when set (tests only), runs when a batch's deliveries are in and
	// before it is stored.
	beforeStore func()

	trace *receiveTracer // nil: no spans (see WithTracerProvider)
}

// NewConsumer returns a Consumer. cfg is completed with defaults and validated. The
// consumer keeps its own connection to cfg.AMQPURLs, or consumes on the one given with
// WithConnection. Without WithRegisterer its metrics go to a private registry.
func NewConsumer(db *sql.DB, cfg ConsumerConfig, opts ...Option) (*Consumer, error) {
	o := newOptions(opts)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("inbox consumer: %w", err)
	}
	switch {
	case db == nil:
		return nil, errors.New("inbox consumer: a database is required")
	case o.conn == nil && len(cfg.AMQPURLs) == 0:
		return nil, errors.New("inbox consumer: AMQPURLs or WithConnection is required")
	case o.conn != nil && len(cfg.AMQPURLs) > 0:
		return nil, errors.New("inbox consumer: give AMQPURLs or WithConnection, not both")
	}
	m, err := o.metrics()
	if err != nil {
		return nil, fmt.Errorf("inbox consumer: %w", err)
	}
	prepare, _ := pg.ParsePrepareMode(cfg.Prepare) // validated
	conn, owned := o.conn, (*broker.Broker)(nil)
	if conn == nil {
		owned = broker.New(cfg.AMQPURLs, broker.Config{Name: cfg.ConnectionName, Role: broker.RoleConsume, TLS: cfg.AMQPTLS}, o.log, m)
		conn = owned
	}
	q := cfg.Queue
	log := o.log.With(zap.String("queue", cfg.Queue), zap.String("table", cfg.Table), zap.String("consumer", cfg.Consumer))
	return &Consumer{
		db:            db,
		broker:        conn,
		owned:         owned,
		cfg:           cfg,
		log:           log,
		backoff:       backoff.Policy{Base: cfg.Backoff, Max: cfg.BackoffMax},
		insertSQL:     inboxdb.InsertSQL(cfg.Table),
		stmts:         pg.NewStatements(db, prepare, "SIDEBOX_DATABASE_PREPARE (inbox.ConsumerConfig.Prepare)", log),
		received:      m.InboxReceived.WithLabelValues(q),
		stored:        m.InboxStored.WithLabelValues(q),
		duplicates:    m.InboxDuplicates.WithLabelValues(q),
		rejected:      m.InboxRejected.MustCurryWith(prometheus.Labels{"queue": q}),
		batchDuration: m.InboxBatchDuration.WithLabelValues(q),
		prefetch:      m.InboxPrefetch.WithLabelValues(q),
		seqBack:       m.InboxSeqRegressed.WithLabelValues(q),
		trace:         newReceiveTracer(o.tp, cfg),
	}, nil
}

// maxStatementBytes bounds the estimated size of one insert statement's parameters:
// PostgreSQL refuses a protocol message of 1 GiB or more by closing the connection,
// which would look like a lost database and be retried forever.
const maxStatementBytes = 1<<30 - 1<<20

// Ready reports whether the consumer is consuming and its last database round trip worked.
func (c *Consumer) Ready() bool {
	return c.consuming.Load() && c.dbOK.Load() && c.broker.Ready()
}

// errChannelClosed ends a session whose AMQP channel went away; its unacknowledged
// deliveries are redelivered by the broker and deduplicated then.
var errChannelClosed = errors.New("AMQP channel closed")

// errPrefetchChange ends a session whose prefetch count no longer suits the message
// sizes; the next session starts at once with the new count (see window).
var errPrefetchChange = errors.New("prefetch count changes")

// Run consumes until ctx is cancelled, then stops consuming, stores and acknowledges the
// batches in hand (within DrainTimeout) and returns nil. A lost broker connection, a
// missing queue or an unreachable database are logged and retried with backoff; Ready is
// false meanwhile.
func (c *Consumer) Run(ctx context.Context) error {
	defer c.consuming.Store(false)
	defer c.stmts.Close()
	if c.owned != nil {
		// The consumer's own connection outlives ctx: the batches in hand when it is
		// cancelled are still stored and acknowledged.
		bctx, stopBroker := context.WithCancel(context.WithoutCancel(ctx))
		var bwg sync.WaitGroup
		bwg.Go(func() { c.owned.Run(bctx) })
		stopDrain := context.AfterFunc(ctx, c.owned.Drain)
		defer func() {
			stopDrain()
			stopBroker()
			bwg.Wait()
		}()
	}
	// work outlives ctx by DrainTimeout, so that the last batches can still be stored.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopDrainTimer := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.DrainTimeout, cancelWork) })
	defer stopDrainTimer()

	failures := 0
	resumed := false // the last session ended for a new prefetch count
	for ctx.Err() == nil {
		progressed, err := c.session(ctx, work, resumed)
		resumed = errors.Is(err, errPrefetchChange)
		if !resumed {
			c.consuming.Store(false) // a new prefetch count takes milliseconds, not an outage
		}
		if ctx.Err() != nil {
			break
		}
		if resumed {
			c.log.Debug("inbox prefetch changes", zap.Int("message_bytes", c.sizeSeen))
			continue
		}
		if progressed {
			failures = 0
		}
		failures++
		c.interrupt.set(err)
		c.log.Warn("inbox consumer interrupted; retrying", zap.Int("failures", failures), zap.String("error", redact.Text(err.Error())))
		if !c.backoff.Sleep(ctx, failures) {
			break
		}
	}
	c.log.Info("inbox consumer stopped")
	return nil
}

// session consumes on one AMQP channel until ctx is done or the channel fails. It
// reports whether it acknowledged at least one batch.
func (c *Consumer) session(ctx, work context.Context, resumed bool) (progressed bool, err error) {
	if c.cfg.Declare || len(c.cfg.Bindings) > 0 {
		if err := c.declare(ctx); err != nil {
			return false, err
		}
	}
	ch, err := c.broker.Channel(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = ch.Close() }() // unacknowledged deliveries go back to the queue
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	win := &window{ch: ch, queue: c.cfg.Queue, max: c.cfg.Prefetch, bytes: c.cfg.PrefetchBytes, size: &c.sizeSeen}
	if err := win.start(win.want(cmp.Or(c.sizeSeen, sizeGuess))); err != nil {
		return false, err
	}
	c.prefetch.Set(float64(win.count))
	if c.prefetchChanged != nil && win.count != c.lastPrefetch {
		c.prefetchChanged(win.count)
	}
	c.lastPrefetch = win.count
	if !resumed {
		c.dbOK.Store(c.db.PingContext(ctx) == nil)
	}
	c.consuming.Store(true)
	started := c.log.Info
	if resumed {
		started = c.log.Debug // a new prefetch count, not news for the log
	}
	started("inbox consumer started", zap.Int("prefetch", win.count), zap.Int("batch_size", c.cfg.BatchSize),
		zap.Int("workers", c.cfg.Workers))

	// sess ends the pipeline early when a worker or the acker fails.
	sess, abort := context.WithCancelCause(work)
	defer abort(nil)
	todo := make(chan *batch)                     // collector → workers
	committed := make(chan *batch, c.cfg.Workers) // workers → acker
	var workers sync.WaitGroup
	for range c.cfg.Workers {
		workers.Go(func() {
			for b := range todo {
				if err := c.storeOne(sess, ch, closed, b); err != nil {
					abort(err)
					return
				}
				close(b.stored)
				select {
				case committed <- b:
				case <-sess.Done():
					return
				}
			}
		})
	}
	acked := make(chan int, 1)
	go func() {
		n, err := c.acknowledge(ch, committed)
		if err != nil {
			abort(err)
		}
		acked <- n
	}()

	open, err := c.collect(ctx, sess, win, todo)
	resize := errors.Is(err, errPrefetchChange)
	if err != nil && !resize {
		abort(err)
	}
	if ctx.Err() != nil {
		win.stop() // no more deliveries; those not yet batched are requeued at close
	}
	close(todo)
	workers.Wait()
	close(committed)
	progressed = <-acked > 0

	switch cause := context.Cause(sess); {
	case sess.Err() != nil && !errors.Is(cause, context.Canceled):
		return progressed, cause // a worker or the acker failed
	case resize:
		// Everything batched is stored and acknowledged; closing the channel returns
		// the rest to the queue.
		return progressed, err
	case ctx.Err() != nil:
		return progressed, nil
	case open:
		return progressed, errors.New("inbox consumer pipeline stopped unexpectedly")
	}
	select {
	case e := <-closed:
		if e != nil {
			return progressed, fmt.Errorf("%w: %v", errChannelClosed, e)
		}
		return progressed, errChannelClosed
	default:
		return progressed, fmt.Errorf("%w: the broker cancelled the consumer (queue deleted?)", errChannelClosed)
	}
}

// declare makes sure the queue exists (declaring it durable only when it is missing, so an
// existing queue's arguments never conflict) and binds it.
func (c *Consumer) declare(ctx context.Context) error {
	ch, err := c.broker.Channel(ctx)
	if err != nil {
		return err
	}
	defer func(ch *amqp.Channel) { _ = ch.Close() }(ch)
	if _, err := ch.QueueDeclarePassive(c.cfg.Queue, true, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			return fmt.Errorf("look up queue %q: %w", c.cfg.Queue, err)
		}
		// The failed passive declare closed the channel.
		if ch, err = c.broker.Channel(ctx); err != nil {
			return err
		}
		defer func(ch *amqp.Channel) { _ = ch.Close() }(ch)
		if _, err := ch.QueueDeclare(c.cfg.Queue, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare queue %q: %w", c.cfg.Queue, err)
		}
		c.log.Info("declared inbox queue")
	}
	for _, b := range c.cfg.Bindings {
		if err := ch.QueueBind(c.cfg.Queue, b.RoutingKey, b.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %s (the exchange must exist): %w", c.cfg.Queue, b, err)
		}
	}
	return nil
}

// batch is a run of consecutive deliveries, stored in one transaction.
type batch struct {
	seq        uint64 // formation order, which is delivery-tag order
	deliveries []amqp.Delivery
	bytes      int             // payload bytes of deliveries
	rejected   map[uint64]bool // delivery tags rejected
	ackTag     uint64          // newest delivery not rejected; 0 when all were
	start      time.Time

	// after are the earlier batches, not yet committed when this one formed, that hold
	// one of its ordering keys, waitKeys those keys; stored is closed once this batch
	// committed.
	after    []*batch
	waitKeys map[string]struct{}
	stored   chan struct{}
}

func newBatch(seq uint64, size int) *batch {
	return &batch{seq: seq, deliveries: make([]amqp.Delivery, 0, size), stored: make(chan struct{})}
}

// committed reports whether b's rows committed.
func (b *batch) committed() bool {
	select {
	case <-b.stored:
		return true
	default:
		return false
	}
}

// dependOn makes b's rows of key wait for p, the newest earlier batch holding key, when
// p has not committed yet.
func (b *batch) dependOn(p *batch, key string) {
	if p == nil || p == b || p.committed() {
		return
	}
	if b.waitKeys == nil {
		b.waitKeys = map[string]struct{}{}
	}
	b.waitKeys[key] = struct{}{}
	if !slices.Contains(b.after, p) {
		b.after = append(b.after, p)
	}
}

// waitForPredecessors waits until every batch b depends on committed, or ctx ends (the
// session failed: the rest of b must not be stored).
func (b *batch) waitForPredecessors(ctx context.Context) error {
	for _, p := range b.after {
		select {
		case <-p.stored:
		case <-ctx.Done():
			return fmt.Errorf("wait for an earlier batch: %w", context.Cause(ctx))
		}
	}
	return nil
}

// keyTracker remembers, per ordering key, the newest batch holding it, so that a later
// batch with the same key waits for that one's commit. A sequence (identity) value is
// taken when a row is inserted, so two batches inserting concurrently would interleave
// their seq values, and a later batch could commit first.
type keyTracker struct {
	last      map[string]*batch
	pruneSize int // prune committed entries when the map grows past this
}

func newKeyTracker(size int) *keyTracker {
	return &keyTracker{last: map[string]*batch{}, pruneSize: max(size, 1024)}
}

// add records that b holds key ("" = no key: never ordered).
func (k *keyTracker) add(b *batch, key string) {
	if key == "" {
		return
	}
	b.dependOn(k.last[key], key)
	k.last[key] = b
	if len(k.last) > k.pruneSize {
		for key, p := range k.last {
			if p.committed() {
				delete(k.last, key)
			}
		}
		k.pruneSize = max(2*len(k.last), k.pruneSize)
	}
}

// collect gathers deliveries into batches and hands them to the workers. A batch is
// handed over once it is full (BatchSize deliveries, or the next one would take it past
// BatchBytes), or BatchWait after its first delivery; while every worker is busy it
// keeps growing up to those bounds. When ctx is done, the batch in hand, with what the
// client already received added up to its bounds, is handed over and collect returns;
// open is false when the delivery channel closed.
func (c *Consumer) collect(ctx, sess context.Context, win *window, todo chan<- *batch) (open bool, err error) {
	var (
		seq   uint64
		cur   *batch
		ready bool // cur may be handed over before it is full
		timer = time.NewTimer(time.Hour)
		due   <-chan time.Time
		keys  = newKeyTracker(2 * c.cfg.Prefetch)
		seqs  = &c.seqs
		next  *amqp.Delivery // received, but starts the batch after cur
	)
	timer.Stop()
	defer timer.Stop()
	handOver := func() {
		if cur != nil {
			select {
			case todo <- cur:
			case <-sess.Done():
			}
		}
	}
	add := func(d *amqp.Delivery) {
		if cur == nil {
			seq++
			cur = newBatch(seq, c.cfg.BatchSize)
			ready = c.cfg.BatchWait == 0
			if !ready {
				timer.Reset(c.cfg.BatchWait)
				due = timer.C
			}
		}
		cur.deliveries = append(cur.deliveries, *d)
		cur.bytes += len(d.Body)
		key := c.orderingKey(d)
		keys.add(cur, key)
		if prev, back := seqs.check(d, key); back {
			c.seqBack.Inc()
			c.log.Warn("inbox delivery goes back in its key's outbox sequence; storing it", zap.String("message_id", pg.Text(d.MessageId)),
				zap.String("ordering_key", key), zap.Any(SeqHeader, d.Headers[SeqHeader]), zap.Int64("highest_before", prev))
		}
	}
	for {
		in, out := win.deliveries, chan<- *batch(nil)
		if cur != nil {
			full := len(cur.deliveries) >= c.cfg.BatchSize || next != nil
			if full {
				in = nil
			}
			if full || ready {
				out = todo
			}
		}
		select {
		case <-ctx.Done():
			// Stopping: the deliveries the client already holds join the batch in
			// hand, within its bounds, rather than going back to the queue.
			for more := true; more && (cur == nil || len(cur.deliveries) < c.cfg.BatchSize) && next == nil; {
				select {
				case d, ok := <-win.deliveries:
					switch {
					case !ok:
						handOver()
						return false, nil
					case cur != nil && cur.bytes+len(d.Body) > c.cfg.BatchBytes:
						next = &d // goes back to the queue with the channel
					default:
						add(&d)
					}
				default:
					more = false
				}
			}
			handOver()
			return true, nil
		case <-sess.Done():
			return true, nil
		case d, ok := <-in:
			if !ok {
				handOver()
				return false, nil
			}
			if win.observe(len(d.Body)) {
				// d and what follows go back to the queue when the session closes its
				// channel, after the batches in hand are stored.
				handOver()
				return true, errPrefetchChange
			}
			if cur != nil && cur.bytes+len(d.Body) > c.cfg.BatchBytes {
				next = &d // cur is full
				continue
			}
			add(&d)
		case <-due:
			ready, due = true, nil
		case out <- cur:
			timer.Stop()
			cur, ready, due = nil, false, nil
			if next != nil {
				add(next)
				next = nil
			}
		}
	}
}

// acknowledge acknowledges committed batches in delivery order: a batch is acknowledged
// once it and every batch before it committed, with one multiple ack for the newest
// such delivery. It returns the number of batches settled.
func (c *Consumer) acknowledge(ch *amqp.Channel, committed <-chan *batch) (int, error) {
	waiting := map[uint64]*batch{}
	next := uint64(1)
	settled := 0
	var failed error
	for b := range committed {
		if failed != nil {
			continue // keep the workers unblocked until they stop
		}
		waiting[b.seq] = b
		var tag uint64
		var done []*batch
		for w, ok := waiting[next]; ok; w, ok = waiting[next] {
			delete(waiting, next)
			next++
			if w.ackTag != 0 {
				tag = w.ackTag
			}
			done = append(done, w)
		}
		if tag != 0 {
			if err := ch.Ack(tag, true); err != nil {
				failed = fmt.Errorf("acknowledge batch: %w", err)
				continue
			}
		}
		for _, w := range done {
			c.batchDuration.Observe(time.Since(w.start).Seconds())
		}
		settled += len(done)
	}
	return settled, failed
}

// rows are a batch as the parallel arrays of inboxdb.InsertSQL.
type rows struct {
	ids, exchanges, keys, types, contentTypes, headers, orderingKeys pq.StringArray
	payloads                                                         [][]byte
	tags                                                             []uint64 // delivery tag of each row
}

func (r *rows) add(tag uint64, d *amqp.Delivery, headers, orderingKey string) {
	r.ids = append(r.ids, d.MessageId)
	r.exchanges = append(r.exchanges, pg.Text(d.Exchange))
	r.keys = append(r.keys, pg.Text(d.RoutingKey))
	r.types = append(r.types, pg.Text(d.Type))
	r.contentTypes = append(r.contentTypes, pg.Text(d.ContentType))
	r.headers = append(r.headers, headers)
	r.orderingKeys = append(r.orderingKeys, orderingKey)
	r.payloads = append(r.payloads, d.Body)
	r.tags = append(r.tags, tag)
}

func (r *rows) slice(i, j int) *rows {
	return &rows{
		ids: r.ids[i:j], exchanges: r.exchanges[i:j], keys: r.keys[i:j], types: r.types[i:j],
		contentTypes: r.contentTypes[i:j], headers: r.headers[i:j], orderingKeys: r.orderingKeys[i:j],
		payloads: r.payloads[i:j], tags: r.tags[i:j],
	}
}

func (r *rows) from(i int) rows { return *r.slice(i, len(r.ids)) }

// partition splits r, keeping the order, into the rows whose ordering key is not in keys
// and those whose key is.
func (r *rows) partition(keys map[string]struct{}) (free, waiting *rows) {
	if len(keys) == 0 {
		return r, &rows{}
	}
	free, waiting = &rows{}, &rows{}
	for i := range r.ids {
		to := free
		if _, ok := keys[r.orderingKeys[i]]; ok {
			to = waiting
		}
		to.ids = append(to.ids, r.ids[i])
		to.exchanges = append(to.exchanges, r.exchanges[i])
		to.keys = append(to.keys, r.keys[i])
		to.types = append(to.types, r.types[i])
		to.contentTypes = append(to.contentTypes, r.contentTypes[i])
		to.headers = append(to.headers, r.headers[i])
		to.orderingKeys = append(to.orderingKeys, r.orderingKeys[i])
		to.payloads = append(to.payloads, r.payloads[i])
		to.tags = append(to.tags, r.tags[i])
	}
	return free, waiting
}

// parts yields r as consecutive runs whose estimated statement size stays within limit
// (a row alone may reach it).
func (r *rows) parts(limit int) iter.Seq[*rows] {
	return func(yield func(*rows) bool) {
		start, size := 0, 0
		for i := range r.ids {
			n := 2*(len(r.payloads[i])+len(r.ids[i])+len(r.exchanges[i])+len(r.keys[i])+len(r.types[i])+
				len(r.contentTypes[i])+len(r.headers[i])+len(r.orderingKeys[i])) + rowOverhead // as rowBytes
			if i > start && size+n > limit {
				if !yield(r.slice(start, i)) {
					return
				}
				start, size = i, 0
			}
			size += n
		}
		if start < len(r.ids) {
			yield(r.slice(start, len(r.ids)))
		}
	}
}

// rowOverhead is a row's share of a statement beyond twice its text and payload bytes
// (quotes, separators, offsets and lengths).
const rowOverhead = 64

// rowBytes estimates what one delivery adds to an insert statement: lib/pq sends bytea
// hex-encoded (two characters a byte) and array elements quoted, with '"' and '\'
// escaped (at most two characters a byte).
func rowBytes(d *amqp.Delivery, headers int, key string) int {
	return 2*(len(d.Body)+len(d.MessageId)+len(d.Exchange)+len(d.RoutingKey)+len(d.Type)+len(d.ContentType)+headers+len(key)) + rowOverhead
}

// payloadParams returns the payloads as one value with each row's 1-based offset and
// length.
func (r *rows) payloadParams() (blob []byte, offsets, lengths pq.Int32Array) {
	if len(r.payloads) == 1 { // no copy: a large message often comes alone
		return r.payloads[0], pq.Int32Array{1}, pq.Int32Array{int32(len(r.payloads[0]))}
	}
	size := 0
	for _, p := range r.payloads {
		size += len(p)
	}
	blob = make([]byte, 0, size)
	offsets = make(pq.Int32Array, len(r.payloads))
	lengths = make(pq.Int32Array, len(r.payloads))
	for i, p := range r.payloads {
		offsets[i] = int32(len(blob) + 1)
		lengths[i] = int32(len(p))
		blob = append(blob, p...)
	}
	return blob, offsets, lengths
}

// storeOne stores b; batches above BatchBytes (a large message alone) are stored one at
// a time: each holds a large payload in memory until it is stored.
func (c *Consumer) storeOne(ctx context.Context, ch *amqp.Channel, closed <-chan *amqp.Error, b *batch) error {
	if b.bytes > c.cfg.BatchBytes {
		if err := b.waitForPredecessors(ctx); err != nil { // not while holding the lock
			return err
		}
		c.oversize.Lock()
		defer c.oversize.Unlock()
	}
	return c.trace.stored(b, c.storeBatch(ctx, ch, closed, b))
}

// storeBatch rejects the deliveries that cannot be stored, stores the others and
// records which delivery acknowledges the batch.
func (c *Consumer) storeBatch(ctx context.Context, ch *amqp.Channel, closed <-chan *amqp.Error, b *batch) error {
	if c.beforeStore != nil {
		c.beforeStore()
	}
	b.start = time.Now()
	c.received.Add(float64(len(b.deliveries)))

	var r rows
	limit := cmp.Or(c.statementLimit, maxStatementBytes)
	seen := make(map[string]struct{}, len(b.deliveries))
	duplicates := 0
	for i := range b.deliveries {
		d := &b.deliveries[i]
		if reason := checkMessageID(d.MessageId); reason != "" {
			if err := c.reject(ch, b, d, reason, ""); err != nil {
				return err
			}
			continue
		}
		if _, dup := seen[d.MessageId]; dup {
			duplicates++
			continue
		}
		seen[d.MessageId] = struct{}{}
		headers, err := HeadersJSON(d.Headers)
		if err != nil { // a type the client library decodes but we do not map: keep the row
			c.log.Warn("inbox delivery has unmappable headers; storing {}", zap.String("message_id", d.MessageId), zap.Error(err))
			headers = []byte("{}")
		}
		key := c.orderingKey(d)
		if size := rowBytes(d, len(headers), key); size > limit {
			detail := fmt.Sprintf("%d bytes of payload encode to about %d bytes for PostgreSQL, above the %d a statement may carry",
				len(d.Body), size, limit)
			if err := c.reject(ch, b, d, RejectTooLarge, detail); err != nil {
				return err
			}
			continue
		}
		r.add(d.DeliveryTag, d, string(headers), key)
	}

	// Rows of keys that wait for an earlier batch go after the others, in a statement of
	// their own. Normally one statement each; split only when large headers push past
	// the limit. b counts as committed only once its predecessors are, even when it has
	// no waiting rows left (rejected, repeated): a later batch relies on that.
	free, waiting := r.partition(b.waitKeys)
	for i, rs := range []*rows{free, waiting} {
		if i == 1 {
			if err := b.waitForPredecessors(ctx); err != nil {
				return err
			}
		}
		for part := range rs.parts(limit) {
			valid := len(part.ids)
			stored, refused, err := c.store(ctx, ch, closed, b, part)
			if err != nil {
				return err
			}
			c.stored.Add(float64(stored))
			duplicates += valid - stored - refused
		}
	}
	c.duplicates.Add(float64(duplicates))
	if c.afterCommit != nil {
		c.afterCommit()
	}
	for i := len(b.deliveries) - 1; i >= 0; i-- {
		if tag := b.deliveries[i].DeliveryTag; !b.rejected[tag] {
			b.ackTag = tag
			break
		}
	}
	return nil
}

// reject settles d without requeue: the broker dead-letters it where the queue has a
// dead-letter exchange and drops it otherwise. It precedes the batch's multiple ack,
// which would otherwise settle d too.
func (c *Consumer) reject(ch *amqp.Channel, b *batch, d *amqp.Delivery, reason, detail string) error {
	fields := []zap.Field{zap.String("reason", reason), zap.Uint64("delivery_tag", d.DeliveryTag),
		zap.String("exchange", d.Exchange), zap.String("routing_key", d.RoutingKey)}
	if detail != "" {
		fields = append(fields, zap.String("error", detail))
	}
	if d.MessageId != "" {
		fields = append(fields, zap.String("message_id", pg.Text(d.MessageId)))
	}
	c.log.Warn("rejecting inbox delivery without requeue", fields...)
	if err := ch.Reject(d.DeliveryTag, false); err != nil {
		return fmt.Errorf("reject delivery: %w", err)
	}
	if b.rejected == nil {
		b.rejected = map[uint64]bool{}
	}
	b.rejected[d.DeliveryTag] = true
	c.rejected.WithLabelValues(reason).Inc()
	return nil
}

// orderingKey returns the ordering key of d as stored: "" when it has none.
func (c *Consumer) orderingKey(d *amqp.Delivery) string {
	key, _ := d.Headers[c.cfg.OrderingHeader].(string)
	return pg.Text(key)
}

// checkMessageID returns why id cannot be an inbox key, or "".
func checkMessageID(id string) string {
	switch {
	case id == "":
		return RejectNoMessageID
	case !utf8.ValidString(id) || strings.ContainsRune(id, 0):
		return RejectInvalidMessageID
	}
	return ""
}

// store inserts the rows in one statement (one implicit transaction) and returns the
// number of new rows and of rows refused. It retries while the database is unreachable,
// holding the deliveries, until the channel closes (they are redelivered then) or ctx
// ends. When the database refuses the data itself, rows are stored one by one and the
// refused ones rejected.
func (c *Consumer) store(ctx context.Context, ch *amqp.Channel, closed <-chan *amqp.Error, b *batch, r *rows) (stored, refused int, err error) {
	for attempt := 1; ; attempt++ {
		n, err := c.insert(ctx, r)
		if err == nil {
			stored += n
		} else if isDataError(err) {
			var k int
			n, k, err = c.insertEach(ctx, ch, b, r)
			stored, refused = stored+n, refused+k
		}
		if err == nil {
			c.dbOK.Store(true)
			return stored, refused, nil
		}
		if ctx.Err() != nil { // the session is ending: not the database's fault
			return stored, refused, fmt.Errorf("store inbox batch: %w", err)
		}
		c.dbOK.Store(false)
		c.log.Warn("cannot store inbox batch; retrying", zap.Int("attempt", attempt), zap.Int("rows", len(r.ids)),
			zap.String("error", redact.Text(err.Error())))
		t := time.NewTimer(c.backoff.Delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return stored, refused, fmt.Errorf("store inbox batch: %w", err)
		case e := <-closed:
			t.Stop()
			return stored, refused, fmt.Errorf("%w while storing a batch: %v", errChannelClosed, e)
		case <-t.C:
		}
	}
}

// insert stores r in one statement; payloads above BatchBytes (a large message alone)
// and inboxdb.LargePayloads go in chunks first, in a transaction.
func (c *Consumer) insert(ctx context.Context, r *rows) (int, error) {
	blob, offsets, lengths := r.payloadParams()
	b := inboxdb.Batch{
		IDs: r.ids, Exchanges: r.exchanges, RoutingKeys: r.keys, Types: r.types, ContentTypes: r.contentTypes,
		Headers: r.headers, OrderingKeys: r.orderingKeys, Payloads: blob, Offsets: offsets, Lengths: lengths,
	}
	if len(blob) > c.cfg.BatchBytes && len(blob) > inboxdb.LargePayloads {
		return inboxdb.InsertLarge(ctx, c.db, inboxdb.InsertLargeSQL(c.cfg.Table), c.cfg.Consumer, b)
	}
	return inboxdb.Insert(ctx, c.stmts, c.insertSQL, c.cfg.Consumer, b)
}

// insertEach stores rows one at a time and rejects those the database refuses. Rows it
// handled are removed from r, so that a retry after a lost connection resumes.
func (c *Consumer) insertEach(ctx context.Context, ch *amqp.Channel, b *batch, r *rows) (stored, refused int, err error) {
	i := 0
	defer func() { *r = r.from(i) }()
	for ; i < len(r.ids); i++ {
		n, err := c.insert(ctx, r.slice(i, i+1))
		switch {
		case err == nil:
			stored += n
		case isDataError(err):
			d := amqp.Delivery{DeliveryTag: r.tags[i], MessageId: r.ids[i], Exchange: r.exchanges[i], RoutingKey: r.keys[i]}
			if err := c.reject(ch, b, &d, RejectUnstorable, err.Error()); err != nil {
				return stored, refused, err
			}
			refused++
		default:
			return stored, refused, err
		}
	}
	return stored, refused, nil
}

// isDataError reports whether PostgreSQL refused the data itself (data exception,
// integrity violation, program limit), so that retrying the same rows cannot succeed.
func isDataError(err error) bool {
	var pe interface{ SQLState() string }
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.SQLState()[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}
