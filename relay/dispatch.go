package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/pg"
)

// batch is one claimed set of rows and the transaction that holds their locks.
type batch struct {
	tx   *sql.Tx
	rows []row
	// overlocked: the claim locked rows it left out (past the byte budget); they
	// become claimable when the batch commits.
	overlocked bool
	rel        int64 // claimed.rel
}

// dispatcher claims batches and hands them to free workers. It alone claims, so the
// walk cursor and the wake-up state need no locking.
//
// Wake-up. Writers notify at commit only while the table's wake-up flag is up. The
// relay sleeps with the flag up: a commit wakes it at once, and that writer takes the
// flag, so that the writers after it do not notify. Once rows come in a
// stream, or it falls behind (a batch comes back full or every worker is busy), it
// lowers the flag and streams (wakeup.go): it claims again whenever a worker is free
// and rows were found, and peeks every few milliseconds otherwise, so writers pay
// nothing for notifications while messages flow. After a quiet spell it raises the
// flag again. The flag goes up before the claim that follows, so that claim sees
// every row committed before it; a writer whose trigger read the flag just before it
// went up and that committed just after that claim is covered by one more look after
// a short settle time, and by the poll.
type dispatcher struct {
	r    *Relay
	idle chan *worker    // workers with an open channel, waiting for a batch
	wake <-chan struct{} // a notification arrived (or the LISTEN connection came back)
	done chan struct{}   // a batch finished

	inflight atomic.Int32 // batches handed out and not yet settled
	followUp atomic.Bool  // a finished batch may have made rows claimable (a key's next row, a retry)

	flagSet    bool      // this relay raised the wake-up flag, and no one lowered or took it since
	raise      bool      // raise the flag before the next claim
	settleAt   time.Time // a claim is due at this time (zero: none) after the flag went up
	keyedFirst bool      // which part of the claim goes first; alternates
	cursor     *string
	failures   int // consecutive database errors
	rowLimit   int // rows the next claim may lock: the batch size, or fewer when rows are large
	// unkeyedFrom is where the next claim's unkeyed part starts; nil: at the start.
	// It follows a drain and goes back to the start when a claim comes back short,
	// and every rescanAfter, for rows it passed while they were locked (in
	// flight, or by another relay) or not yet committed.
	unkeyedFrom *unkeyedCursor
	fromStart   time.Time // when the unkeyed part last started at the start

	warmed  bool           // warmUp has run
	warming sync.WaitGroup // warmUp's goroutine

	pollGap time.Duration // polled wake-ups: the last sleep after an empty claim
	foundAt time.Time     // when the last claim that found rows ran
	wk      wakeState     // streaming (wakeup.go)
}

// finished is called by a worker when its batch is settled. followUp: the batch had
// keyed rows (their successors may now be heads) or rows left for later (retries,
// rows without a confirm).
func (d *dispatcher) finished(followUp bool) {
	if followUp {
		d.followUp.Store(true)
	}
	d.inflight.Add(-1)
	select {
	case d.done <- struct{}{}:
	default:
	}
}

// run claims until ctx is cancelled.
func (d *dispatcher) run(ctx context.Context) {
	r := d.r
	d.raise = true // start listening with the first claim
	wait := time.Duration(0)
	for {
		if wait > 0 {
			r.idle.Store(d.settleAt.IsZero() && d.inflight.Load() == 0)
			ok := d.sleep(ctx, wait)
			r.idle.Store(false)
			if !ok {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
		w := d.acquire(ctx)
		if w == nil {
			break
		}
		if d.raise {
			if err := r.flag.set(ctx); err != nil {
				d.idle <- w
				if ctx.Err() != nil {
					break
				}
				wait = d.dbFailed("cannot raise the wake-up flag; retrying", err)
				continue
			}
			d.raise, d.flagSet = false, true
			d.settleAt = time.Now().Add(settleTimeout)
		}
		// Signals that came before this claim are answered by it.
		d.drainSignals()
		claimStart := time.Now()
		limit := d.limit()
		c, tx, err := d.claim(ctx)
		if err != nil {
			d.idle <- w
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, pg.ErrPreparedLost) {
				wait = 0 // the statements switched to plain queries: claim again at once
				continue
			}
			wait = d.dbFailed("cannot claim outbox rows; retrying", err)
			continue
		}
		d.failures = 0
		r.setDBOK(true)
		if !d.settleAt.IsZero() && !claimStart.Before(d.settleAt) {
			d.settleAt = time.Time{}
		}
		d.sawFlag(ctx, c.flag)
		walkStopped := c.visited >= d.maxVisits() // the walk ran out of visits, not of keys
		if len(c.rows) > 0 {
			prev := d.foundAt
			d.foundAt = claimStart
			r.m.BatchSize.WithLabelValues(r.q.tableName).Observe(float64(len(c.rows)))
			// Full: the batch or its byte budget is used up, or the walk has keys left.
			full := len(c.rows) >= limit || c.bytes >= r.cfg.BatchBytes || c.locked > len(c.rows) || walkStopped
			busy := d.inflight.Add(1) >= int32(r.cfg.Workers)
			if d.found(prev, claimStart, full || busy) && d.flagSet {
				// Behind, or rows come fast: stream without notifications.
				r.flag.clear(context.WithoutCancel(ctx), r.log)
				d.flagSet = false
			}
			w.in <- &batch{tx: tx, rows: c.rows, overlocked: c.locked > len(c.rows), rel: c.rel}
			switch {
			case full, !busy && !d.flagSet:
				wait = 0 // draining, and a worker is free (or will be: acquire waits)
			default:
				wait = r.cfg.PollInterval // a notification or a finished batch wakes the relay
			}
			continue
		}
		_ = tx.Rollback()
		d.idle <- w
		if walkStopped {
			wait = 0 // keys not visited yet in this round
			continue
		}
		if r.polled.Load() {
			wait = d.pollWait(ctx, c.due)
			d.warmUp(ctx)
			continue
		}
		if d.keepStreaming() {
			wait = d.streamWait(c.due)
			continue
		}
		if !d.flagSet && !d.yield() {
			// Caught up: raise the flag, then claim once more for what committed
			// before it was up.
			d.raise = true
			wait = 0
			continue
		}
		// Sleep until a notification, a finished batch that needs a look, the settle
		// claim, the next due row or the poll.
		wait = r.cfg.PollInterval
		if c.due > 0 && c.due < wait {
			wait = c.due
		}
		if !d.settleAt.IsZero() {
			wait = max(min(wait, time.Until(d.settleAt)), time.Millisecond)
		}
		d.warmUp(ctx)
	}
	d.warming.Wait()
	if !d.flagSet {
		// Leave the flag up for other relays of the table, which may sleep.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = r.flag.set(ctx)
	}
}

// pollWait returns how long to sleep after an empty claim while no notification can
// wake the relay: pollMin for pollActive after the last claim that found rows, then
// doubling with every empty claim up to the poll interval, never past the next due
// row. The wake-up flag is lowered, so that writers do not notify in vain.
func (d *dispatcher) pollWait(ctx context.Context, due time.Duration) time.Duration {
	r := d.r
	if d.flagSet {
		r.flag.clear(context.WithoutCancel(ctx), r.log)
		d.flagSet = false
	}
	d.raise, d.settleAt = false, time.Time{}
	floor := min(pollMin, r.cfg.PollInterval)
	if time.Since(d.foundAt) < pollActive {
		d.pollGap = floor
	} else {
		d.pollGap = min(max(2*d.pollGap, floor), r.cfg.PollInterval)
	}
	if due > 0 && due < d.pollGap {
		return due
	}
	return d.pollGap
}

// dbFailed records a database error and returns how long to wait before trying again.
func (d *dispatcher) dbFailed(msg string, err error) time.Duration {
	r := d.r
	d.failures++
	r.setDBOK(false)
	d.flagSet = false // the database may have lost or reverted it
	fields := []zap.Field{zap.Int("failures", d.failures), errField(err)}
	if pe, ok := errors.AsType[*pq.Error](err); ok && pe.Code == "42P01" {
		fields = append(fields, zap.String("hint", "the outbox table or its wake-up sequence does not exist: run `sidebox migrate up`"))
	}
	r.log.Warn(msg, fields...)
	return r.reconnect.Delay(d.failures)
}

// rescanAfter bounds how long claims start their unkeyed part at the cursor before one
// starts at the start again. That claim reads the index entries of every row deleted
// since the last vacuum, so it is made rarely.
const rescanAfter = 10 * time.Second

// limit is the row limit of the next claim.
func (d *dispatcher) limit() int {
	n := d.r.cfg.BatchSize
	if d.rowLimit > 0 {
		n = d.rowLimit
	}
	if c := d.r.batchCap.Load(); c > 0 {
		n = min(n, int(c))
	}
	return n
}

// maxVisits bounds the keys one claim's walk visits, so that many blocked keys cannot
// make every claim slow.
func (d *dispatcher) maxVisits() int { return 4*d.r.cfg.BatchSize + 16 }

// claim begins a transaction and claims a batch in it. The transaction outlives ctx: a
// batch in flight is finished even when the relay is stopping.
func (d *dispatcher) claim(ctx context.Context) (claimed, *sql.Tx, error) {
	r := d.r
	if hot := r.q.hot(); !r.stmts.Ready(hot...) {
		pctx, cancel := context.WithTimeout(ctx, dbTimeout)
		r.stmts.Prepare(pctx, hot...)
		cancel()
	}
	tx, err := r.db.BeginTx(context.WithoutCancel(ctx), nil)
	if err != nil {
		return claimed{}, nil, fmt.Errorf("begin claim: %w", err)
	}
	d.keyedFirst = !d.keyedFirst
	r.claims.Add(1)
	qctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if _, err := tx.ExecContext(qctx, r.txSettings); err != nil {
		_ = tx.Rollback()
		return claimed{}, nil, fmt.Errorf("set up the claim's transaction: %w", err)
	}
	cfg := r.cfg
	cfg.BatchSize = d.limit()
	if time.Since(d.fromStart) > rescanAfter {
		d.unkeyedFrom = nil
	}
	var c claimed
	for {
		from := d.unkeyedFrom
		if from == nil {
			d.fromStart = time.Now()
		}
		c, err = r.q.claim(qctx, r.stmts, tx, cfg, d.keyedFirst, d.cursor, d.maxVisits(), from)
		if err != nil {
			_ = tx.Rollback()
			return claimed{}, nil, err
		}
		switch {
		case len(c.rows) < cfg.BatchSize && c.locked <= len(c.rows) && c.bytes < cfg.BatchBytes:
			d.unkeyedFrom = nil // short: caught up, start at the start next time
		case c.unkeyed > 0:
			last := c.unkeyedLast
			d.unkeyedFrom = &last
		}
		// Move the walk's cursor: after the last key visited, or back to the start
		// when the walk reached the end of the keys. A walk that had no room (the
		// other part took the whole batch) visited nothing and leaves it.
		switch {
		case c.walkEnded:
			d.cursor = nil
		case c.last.Valid:
			last := c.last.String
			d.cursor = &last
		}
		// Nothing after the cursor: look once more from the start, in the same
		// transaction (the empty claim locked nothing).
		if len(c.rows) > 0 || from == nil {
			break
		}
	}
	if len(c.rows) > 0 {
		// Rows the budget holds at the size of these, plus one: a claim locks few
		// rows that it then leaves out.
		avg := max(c.bytes/len(c.rows), 1)
		d.rowLimit = min(max(r.cfg.BatchBytes/avg+1, 1), r.cfg.BatchSize)
	}
	return c, tx, nil
}

// warmConns bounds the connections warmUp plans: a relay uses few at the low rates
// where a plan made at a batch's claim shows in its latency; at high rates the plans
// made lazily cost little next to the batches.
const warmConns = 4

// warmUp plans the prepared statements ahead, once, the first time the relay has
// nothing to do: each is planned at its first execution on a connection, 2 to 10 ms for
// a claim variant and up to 30 ms as a new backend's first statement, and made lazily
// these plans held up the first batches after a start (outboxdb.Queries.Warm). It
// plans them in the background on up to Workers + 1 of the pool's idle connections (at
// most warmConns), leaving one of a bounded pool free for the application, and is best
// effort: a connection it cannot have or warm plans its statements at its first claims
// instead, and so does one the pool opens later.
func (d *dispatcher) warmUp(ctx context.Context) {
	r := d.r
	if d.warmed || !r.stmts.Prepared() || !r.stmts.Ready(r.q.hot()...) {
		return
	}
	d.warmed = true
	// Only connections the pool holds idle: opening new ones would cost a backend each.
	st := r.db.Stats()
	n := min(r.cfg.Workers+1, warmConns, st.Idle)
	if st.MaxOpenConnections > 0 {
		n = max(0, min(n, st.MaxOpenConnections-st.InUse-1))
	}
	d.warming.Go(func() {
		wctx, cancel := context.WithTimeout(ctx, dbTimeout)
		defer cancel()
		r.warm(wctx, n)
		if r.afterWarm != nil {
			r.afterWarm()
		}
	})
}

// warm runs warmConn on n connections at once.
func (r *Relay) warm(ctx context.Context, n int) {
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := r.db.Conn(ctx)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			if err := r.warmConn(ctx, c); err != nil && ctx.Err() == nil {
				r.log.Debug("cannot plan the claim ahead; its first claims on that connection will", errField(err))
			}
		})
	}
	wg.Wait()
}

// warmConn runs Warm in a transaction of c, rolled back.
func (r *Relay) warmConn(ctx context.Context, c *sql.Conn) error {
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, r.txSettings); err != nil {
		return err
	}
	return r.q.Warm(ctx, r.stmts, tx)
}

// acquire waits for a worker with an open channel; nil when ctx is done. While the
// broker is away no worker has a channel, so nothing is claimed and no attempt burnt.
func (d *dispatcher) acquire(ctx context.Context) *worker {
	for {
		select {
		case <-ctx.Done():
			return nil
		case w := <-d.idle:
			if w.pc == nil || w.pc.ch.IsClosed() {
				w.in <- nil // reopen first
				continue
			}
			return w
		}
	}
}

// sleep waits for wait, a notification or a finished batch that needs a claim; false
// when ctx is done. With the flag up, a batch that was published completely changes
// nothing: new rows notify.
func (d *dispatcher) sleep(ctx context.Context, wait time.Duration) bool {
	r := d.r
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-d.wake:
			return true
		case <-d.done:
			if d.followUp.Swap(false) || !d.flagSet {
				return true
			}
			r.idle.Store(d.settleAt.IsZero() && d.inflight.Load() == 0)
		case <-t.C:
			if wait = d.peek(ctx); wait > 0 {
				t.Reset(wait) // nothing to claim yet
				continue
			}
			return true
		}
	}
}

// drainSignals consumes pending wake-ups and batch completions.
func (d *dispatcher) drainSignals() {
	for {
		select {
		case <-d.wake:
		case <-d.done:
			d.followUp.Store(false)
		default:
			return
		}
	}
}
