package inbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/tracing"
)

// Message is one stored inbox row, as handed to a Handler.
type Message struct {
	Consumer    string
	MessageID   string
	Exchange    string
	RoutingKey  string
	Type        string          // AMQP type; "" when absent
	ContentType string          // "" when absent
	Headers     json.RawMessage // a JSON object; see HeadersJSON for the mapping
	Payload     []byte
	OrderingKey string    // "" when none
	ReceivedAt  time.Time // when the sidecar stored it, database clock
	Attempts    int       // failed handler calls so far
}

// Handler applies a message's effect through tx, the transaction in which the Processor
// then marks the row processed. Returning an error rolls the effect back and schedules
// a retry; the message is dead after ProcessorConfig.MaxAttempts failures. A Handler must
// not commit or roll back tx.
type Handler func(ctx context.Context, tx *sql.Tx, msg Message) error

// Processor processes the rows the sidecar stored for one consumer, each exactly once:
// the handler's effect and the row's processed mark commit in the same transaction.
// Several Processors (in several replicas) may run on one table; they skip each other's
// rows.
type Processor struct {
	db      *sql.DB
	cfg     ProcessorConfig
	handler Handler
	log     *zap.Logger
	retry   backoff.Policy

	sql    inboxdb.Processor
	stmts  *pg.Statements // the claims, prepared where that is safe
	tracer trace.Tracer   // nil: no spans (see WithTracerProvider)

	mu         sync.Mutex
	cursor     *string // ordered: the key after which the next claim's walk starts
	keyedFirst bool    // ordered: the next claim takes keyed rows first

	// beforeCommit, when set (tests only), runs after a batch was handled and marked and
	// before its transaction commits.
	beforeCommit func()
}

// NewProcessor returns a Processor calling handler for each unprocessed row of
// cfg.Consumer. cfg is completed with defaults and validated. Of the options it takes
// WithLogger and WithTracerProvider. The handler's context carries the message's trace
// context (see WithTracerProvider).
func NewProcessor(db *sql.DB, cfg ProcessorConfig, handler Handler, opts ...Option) (*Processor, error) {
	o := newOptions(opts)
	if o.conn != nil {
		return nil, errors.New("inbox processor: WithConnection applies to a Consumer only")
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("inbox processor: %w", err)
	}
	if handler == nil {
		return nil, errors.New("inbox processor: handler is nil")
	}
	log := o.log.With(zap.String("table", cfg.Table), zap.String("consumer", cfg.Consumer))
	prepare, _ := pg.ParsePrepareMode(cfg.Prepare) // validated
	return &Processor{
		db:      db,
		cfg:     cfg,
		handler: handler,
		log:     log,
		retry:   backoff.Policy{Base: cfg.RetryBackoff, Max: cfg.RetryBackoffMax},
		sql:     inboxdb.NewProcessor(cfg.Table, cfg.Ordered),
		stmts:   pg.NewStatements(db, prepare, "inbox.ProcessorConfig.Prepare", log),
		tracer:  tracing.Tracer(o.tp),
	}, nil
}

// Run processes rows until ctx is cancelled and returns nil then; a batch in progress is
// rolled back (its rows are processed later, no attempt counted). Database errors are
// logged and retried with backoff. Without rows it polls every PollInterval.
func (p *Processor) Run(ctx context.Context) error {
	defer p.stmts.Close()
	failures := 0
	for {
		n, err := p.ProcessOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := p.cfg.PollInterval
		if err != nil {
			failures++
			wait = min(p.retry.Delay(failures), p.cfg.PollInterval*10)
			p.log.Warn("inbox processing failed; retrying", zap.Int("failures", failures), zap.Error(err))
		} else {
			failures = 0
			if n > 0 {
				continue
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// ProcessOnce claims up to BatchSize due rows in one transaction and calls the handler
// for each, in arrival order, inside a savepoint: a failing handler's effect is rolled
// back and the row's attempt recorded, the others are marked processed; then it commits.
// Ordered, a batch may hold several consecutive rows of a key; after a failure the
// key's later rows in the batch are left for a later batch, behind the failed row. It
// returns the number of rows handled (processed or failed). Until the claims are
// prepared (see ProcessorConfig.Prepare) it first tries to prepare them, with
// connections of the pool other than the batch's.
func (p *Processor) ProcessOnce(ctx context.Context) (int, error) {
	if claims := p.sql.Claims(); !p.stmts.Ready(claims...) {
		p.stmts.Prepare(ctx, claims...) // before the batch: it needs connections of its own
	}
	n, err := p.processOnce(ctx)
	if errors.Is(err, pg.ErrPreparedLost) {
		// The claim failed before any handler ran, and the claims are plain queries now.
		n, err = p.processOnce(ctx)
	}
	return n, err
}

func (p *Processor) processOnce(ctx context.Context) (int, error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin inbox batch: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, p.sql.ClaimSettings()); err != nil {
		return 0, fmt.Errorf("begin inbox batch: %w", err)
	}

	rows, err := p.claim(ctx, tx)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	// The handlers run with the planner settings the application set, from the first
	// message's savepoint on (see handle).
	if _, err := tx.ExecContext(ctx, p.sql.HandlerSettings()+`; SAVEPOINT sidebox_inbox_message`); err != nil {
		return 0, fmt.Errorf("savepoint: %w", err)
	}
	var done []string
	handled := 0
	failed := map[string]bool{} // ordered: keys whose row failed in this batch
	open := true                // a savepoint is open for the next message (see handle)
	for i, r := range rows {
		if r.Keyed && failed[r.OrderingKey] {
			continue
		}
		msg := p.message(r)
		ok, err := p.handle(ctx, tx, &msg, &open, i == len(rows)-1)
		if err != nil {
			return 0, err
		}
		handled++
		switch {
		case ok:
			done = append(done, msg.MessageID)
		case p.cfg.Ordered && r.Keyed:
			failed[r.OrderingKey] = true
		}
	}
	if len(done) > 0 {
		if err := p.sql.MarkProcessed(ctx, tx, p.cfg.Consumer, done); err != nil {
			return 0, err
		}
	}
	if p.beforeCommit != nil {
		p.beforeCommit()
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit inbox batch: %w", err)
	}
	return handled, nil
}

// maxVisits bounds the keys one claim's walk visits, so that many blocked keys cannot
// make a claim long; the cursor lets the next claim go on from there.
func (p *Processor) maxVisits() int { return 4*p.cfg.BatchSize + 16 }

// claim locks the batch's rows. Ordered, the walk over the keys goes on from where the
// last claim left it, and keyed and unkeyed rows take first in turn.
func (p *Processor) claim(ctx context.Context, tx *sql.Tx) ([]inboxdb.Row, error) {
	p.mu.Lock()
	c := inboxdb.Claim{Limit: p.cfg.BatchSize, KeyedFirst: p.keyedFirst, Cursor: p.cursor, MaxVisits: p.maxVisits()}
	p.keyedFirst = !p.keyedFirst
	p.mu.Unlock()
	got, err := p.sql.Claim(ctx, p.stmts, tx, p.cfg.Consumer, c)
	if err != nil {
		return nil, err
	}
	if p.cfg.Ordered && len(got.Rows) == 0 && c.Cursor != nil && got.WalkEnded {
		// Nothing after the cursor: start again at the first key. The claim that found
		// nothing holds no row.
		c.Cursor = nil
		if got, err = p.sql.Claim(ctx, p.stmts, tx, p.cfg.Consumer, c); err != nil {
			return nil, err
		}
	}
	if p.cfg.Ordered {
		p.mu.Lock()
		switch {
		case got.WalkEnded:
			p.cursor = nil
		case got.Last.Valid:
			last := got.Last.String
			p.cursor = &last
		}
		p.mu.Unlock()
	}
	return got.Rows, nil
}

// message is the Message of claimed row r.
func (p *Processor) message(r inboxdb.Row) Message {
	return Message{
		Consumer: p.cfg.Consumer, MessageID: r.MessageID, Exchange: r.Exchange, RoutingKey: r.RoutingKey,
		Type: r.MessageType, ContentType: r.ContentType, Headers: json.RawMessage(r.Headers), Payload: r.Payload,
		OrderingKey: r.OrderingKey, ReceivedAt: r.ReceivedAt, Attempts: r.Attempts,
	}
}

// handle runs the handler for msg in a savepoint. It reports whether the handler
// succeeded; a failure is recorded on the row (still locked by this transaction). An
// error means the transaction itself is unusable.
//
// *open says that the previous message's release already opened msg's savepoint: after
// a success, one round trip releases the savepoint and, unless msg is the batch's last
// row, opens the next one, so that a message costs the handler's statements and one
// more. A savepoint opened for rows that are then skipped (behind a failed row of their
// key) is left to the commit.
func (p *Processor) handle(ctx context.Context, tx *sql.Tx, msg *Message, open *bool, last bool) (bool, error) {
	if !*open {
		if _, err := tx.ExecContext(ctx, `SAVEPOINT sidebox_inbox_message`); err != nil {
			return false, fmt.Errorf("savepoint: %w", err)
		}
	}
	*open = false
	herr := p.callTraced(ctx, tx, msg)
	if herr == nil {
		release := `RELEASE SAVEPOINT sidebox_inbox_message`
		if !last {
			release += `; SAVEPOINT sidebox_inbox_message`
		}
		if _, err := tx.ExecContext(ctx, release); err != nil {
			return false, fmt.Errorf("release savepoint: %w", err)
		}
		*open = !last
		return true, nil
	}
	if ctx.Err() != nil {
		// Shutting down: not the message's fault, burn no attempt.
		return false, fmt.Errorf("handle inbox message %q: %w", msg.MessageID, ctx.Err())
	}
	if _, err := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT sidebox_inbox_message`); err != nil {
		return false, fmt.Errorf("roll back handler of inbox message %q: %w", msg.MessageID, err)
	}
	delay := p.retry.Delay(msg.Attempts + 1)
	dead, err := p.sql.MarkFailed(ctx, tx, p.cfg.Consumer, msg.MessageID, pg.ErrorText(herr.Error()), delay, p.cfg.MaxAttempts)
	if err != nil {
		return false, err
	}
	if dead {
		p.log.Error("inbox message is dead after its last attempt", zap.String("message_id", msg.MessageID),
			zap.Int("attempts", msg.Attempts+1), zap.Error(herr))
	} else {
		p.log.Warn("inbox handler failed; will retry", zap.String("message_id", msg.MessageID),
			zap.Int("attempts", msg.Attempts+1), zap.Duration("retry_in", delay), zap.Error(herr))
	}
	return false, nil
}

// callHandler turns a handler panic into an error, so that one message cannot stop the
// processor, and its effect is rolled back with the savepoint.
func (p *Processor) callHandler(ctx context.Context, tx *sql.Tx, msg *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return p.handler(ctx, tx, *msg)
}
