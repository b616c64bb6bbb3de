package relay

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/outboxdb"
)

// worker publishes the batches the dispatcher hands it, on a confirm-mode channel it
// keeps for as long as the channel stays healthy.
//
// No call to the broker that can wait for its answer (a channel's open, confirm.select
// or close, a publish, whose socket write blocks once RabbitMQ stops reading) is
// waited on past a deadline while a batch's transaction is open or the relay stops:
// during a memory or disk alarm RabbitMQ reads nothing from a connection that
// publishes, for as long as the alarm lasts. Such calls run in goroutines that are
// left to finish; a channel given up on is abandoned (see abandon).
type worker struct {
	r  *Relay
	d  *dispatcher
	id int
	in chan *batch // a batch, or nil: reopen the channel
	pc *pubChannel
}

// pubChannel is a confirm-mode channel with its returned-message and close listeners.
type pubChannel struct {
	ch        *amqp.Channel
	returns   chan amqp.Return
	closes    chan *amqp.Error
	closed    *amqp.Error // the close reason, once seen
	abandoned bool        // being closed in the background; never used again
}

// closeReason returns why the channel closed, or nil while it is open or when it was
// closed without a server error.
func (p *pubChannel) closeReason() *amqp.Error {
	if p.closed == nil {
		select {
		case e, ok := <-p.closes:
			if ok {
				p.closed = e
			}
		default:
		}
	}
	return p.closed
}

// outcome of one row's publish attempt.
type outcome uint8

const (
	unknown   outcome = iota // no confirm: the row is left as it was
	confirmed                // the broker took it: delete
	failed                   // returned, nacked or unpublishable: an attempt
)

// result is the outcome of a row, with the reason of a failure.
type result struct {
	outcome outcome
	reason  string
	kind    failKind
}

type failKind uint8

const (
	failOther     failKind = iota
	failReturned           // the broker returned it (unroutable)
	failNacked             // the broker nacked it
	failPermanent          // it cannot be mapped onto AMQP: dead at once
)

func (w *worker) run(ctx context.Context) {
	defer func() { w.abandon(w.pc) }()
	for {
		if w.pc == nil || w.pc.ch.IsClosed() {
			if !w.open(ctx) {
				return
			}
		}
		w.d.idle <- w // never blocks: one place per worker
		b, ok := <-w.in
		if !ok {
			return
		}
		if b == nil {
			continue
		}
		w.d.finished(w.process(ctx, b) || b.overlocked)
	}
}

// open replaces the channel, waiting for the broker as long as it takes; false when ctx
// is done first.
func (w *worker) open(ctx context.Context) bool {
	w.abandon(w.pc)
	r := w.r
	for failures := 1; ; failures++ {
		ch, err := r.broker.Channel(ctx)
		if err == nil {
			if err = confirmMode(ctx, ch); err == nil {
				// The client's reader waits at most 5s for room in the returns
				// buffer, then drops the return, and the ack that follows would
				// make the row look confirmed: a loss. A send publishes at most a
				// batch (BatchSize rows) and then either drains all their returns
				// (every confirm in) or abandons the channel (timeout), on which
				// nothing is published after that batch and nothing is read, so
				// at most BatchSize returns are ever buffered: the reader never
				// waits.
				w.pc = &pubChannel{
					ch:      ch,
					returns: ch.NotifyReturn(make(chan amqp.Return, r.cfg.BatchSize+1)),
					closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
				}
				return true
			}
		}
		if ctx.Err() != nil {
			return false
		}
		r.log.Warn("cannot open a publishing channel; retrying", zap.Int("worker", w.id), zap.Int("failures", failures), errField(err))
		if !r.reconnect.Sleep(ctx, failures) {
			return false
		}
	}
}

// confirmMode puts ch in confirm mode, or closes it (in the background) and returns
// why not. It gives up when ctx is done: the client's call has no deadline, and
// RabbitMQ leaves it unanswered on a connection it blocks. The call given up on is
// left to finish before the channel is closed.
func confirmMode(ctx context.Context, ch *amqp.Channel) error {
	done := make(chan error, 1)
	go func() { done <- ch.Confirm(false) }()
	var err error
	select {
	case err = <-done:
		if err == nil {
			return nil
		}
		go func() { _ = ch.Close() }()
	case <-ctx.Done():
		err = ctx.Err()
		go func() {
			<-done
			_ = ch.Close()
		}()
	}
	return fmt.Errorf("put channel in confirm mode: %w", err)
}

// abandon stops using pc (nil: none) and closes it in the background. A close waits
// for the broker's channel.close-ok, which a blocked connection does not send until
// the alarm clears; nothing waits for it. An abandoned channel is never used again:
// its late confirms and returns, if any, are read by no one and never taken for
// another batch's.
func (w *worker) abandon(pc *pubChannel) {
	if pc == nil || pc.abandoned {
		return
	}
	pc.abandoned = true
	if w.pc == pc {
		w.pc = nil
	}
	go func() { _ = pc.ch.Close() }()
}

// process publishes a batch and settles it. It runs to the end even when ctx is
// cancelled: stopping the relay lets the batches in flight finish. It reports whether
// the batch may have made other rows claimable: it had keyed rows (the next row of
// their key), or rows that stay in the outbox (retries, rows without a confirm).
func (w *worker) process(ctx context.Context, b *batch) (followUp bool) {
	start := time.Now()
	var results []result
	if release, ok := w.payloads(ctx, b); ok {
		results = w.publish(ctx, b.rows)
		release()
	} else {
		results = make([]result, len(b.rows)) // unknown: the rows stay as they are
	}
	ok := w.r.settle(ctx, b, results, start)
	if !ok {
		return true
	}
	for i, x := range results {
		if x.outcome != confirmed || b.rows[i].keyed {
			return true
		}
	}
	return false
}

// payloads reads the payloads the claim left in the table (outboxdb.InlinePayload), in
// the batch's transaction. A batch above BatchBytes (one large row) first waits, until
// PublishTimeout, for any other worker's to be published: one such payload is in
// memory at a time. When it returns true, release drops the payloads it read and lets
// the next large batch go; false: a payload could not be read, and the batch is left
// as it is.
func (w *worker) payloads(ctx context.Context, b *batch) (release func(), ok bool) {
	r := w.r
	var left []int
	size := 0
	for i := range b.rows {
		if b.rows[i].payload == nil && r.oversized(b.rows[i].size) == "" { // a row too large is never read
			left = append(left, i)
			size += b.rows[i].size
		}
	}
	if len(left) == 0 {
		return func() {}, true
	}
	unlock := func() {}
	if size > r.cfg.BatchBytes {
		t := time.NewTimer(r.cfg.PublishTimeout)
		defer t.Stop()
		select {
		case r.large <- struct{}{}:
			unlock = func() { <-r.large }
		case <-t.C:
			r.log.Warn("another large outbox row took too long to publish; this one will be published again",
				zap.Int("worker", w.id), zap.Int("payload_bytes", size))
			return nil, false
		}
	}
	release = func() {
		for _, i := range left {
			b.rows[i].payload = nil
		}
		unlock()
	}
	// Its own deadline, as settling has: the batch is finished even when the relay is
	// stopping. A few seconds per chunk.
	dbctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(1+size/outboxdb.PayloadChunk)*dbTimeout)
	defer cancel()
	for _, i := range left {
		rw := &b.rows[i]
		p, err := r.q.Payload(dbctx, r.stmts, b.tx, rw.id, rw.size)
		if err != nil {
			release()
			r.setDBOK(false)
			r.log.Warn("cannot read the payload of an outbox row; its batch stays in the outbox and will be published again",
				zap.Int("rows", len(b.rows)), errField(err))
			return nil, false
		}
		rw.payload = p
	}
	return release, true
}

// publish sends the batch and collects the outcome of every row. Rows that made the
// broker close a channel before (suspects) go first, one at a time, so that the one that
// does it again is identified; the others are pipelined.
func (w *worker) publish(ctx context.Context, rows []row) []result {
	r := w.r
	res := make([]result, len(rows))
	msgs := make([]amqp.Publishing, len(rows))
	frameMax := r.broker.FrameSize()
	var alone, pipelined []int
	runs := runGate{}
	for i := range rows {
		if runs.held(rows[i]) {
			continue // behind a row of its key that cannot go first: stays as it is
		}
		if why := r.oversized(rows[i].size); why != "" {
			res[i] = result{outcome: failed, kind: failPermanent, reason: why}
			runs.hold(rows[i])
			continue
		}
		msg, err := rows[i].publishing(frameMax)
		if err != nil {
			res[i] = result{outcome: failed, kind: failPermanent, reason: "cannot map the row to an AMQP message: " + err.Error()}
			runs.hold(rows[i])
			continue
		}
		msgs[i] = msg
		switch {
		case r.isSuspect(rows[i].id) && !runs.started(rows[i]):
			alone = append(alone, i)
		case r.isSuspect(rows[i].id):
			runs.hold(rows[i]) // it would overtake its key's earlier rows
			continue
		default:
			pipelined = append(pipelined, i)
		}
		runs.start(rows[i])
	}
	spans := r.trace.publishing(ctx, rows, msgs, res, frameMax)
	defer spans.end(res)
	deadline := time.Now().Add(r.cfg.PublishTimeout)
	for _, i := range alone {
		if !w.ready(ctx, deadline) {
			return res
		}
		pc := w.pc
		w.send(pc, rows, msgs, []int{i}, res, deadline)
		switch ce := pc.closeReason(); {
		case res[i].outcome != unknown:
			r.dropSuspect(rows[i].id)
		case ce != nil && isSoftError(ce):
			// Alone on the channel, so this row did it. It stays a suspect: its
			// next attempt goes alone too.
			res[i] = result{outcome: failed, reason: "the broker closed the channel on it: " + ce.Error()}
			if r.refusedAsTooLarge(ce) {
				res[i].kind = failPermanent // never smaller next time
			}
		}
	}
	for _, i := range alone {
		if res[i].outcome != confirmed {
			runs.hold(rows[i]) // the rest of its run waits for it
		}
	}
	pipelined = runs.drop(rows, pipelined)
	if len(pipelined) == 0 || !w.ready(ctx, deadline) {
		return res
	}
	pc := w.pc
	w.send(pc, rows, msgs, pipelined, res, deadline)
	if ce := pc.closeReason(); ce != nil && isSoftError(ce) {
		r.refusedAsTooLarge(ce) // learn the limit: the next attempt refuses the row up front
		// One of the unconfirmed rows probably caused it (a missing exchange, a
		// message too large); next time they go one at a time.
		var ids []string
		for _, i := range pipelined {
			if res[i].outcome == unknown {
				ids = append(ids, rows[i].id)
			}
		}
		r.addSuspects(ids)
		r.log.Warn("the broker closed the publishing channel; the unconfirmed rows will be published one at a time",
			zap.Int("unconfirmed", len(ids)), zap.String("reason", ce.Error()))
	}
	return res
}

// ready makes sure the worker has an open channel before deadline; a closed one is
// replaced only if the broker is connected (a channel exception), never waited for (an
// outage).
func (w *worker) ready(ctx context.Context, deadline time.Time) bool {
	if w.pc != nil && !w.pc.ch.IsClosed() {
		return true
	}
	if !w.r.broker.Ready() {
		return false
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	return w.open(ctx)
}

// pending is a published row waiting for its confirm.
type pending struct {
	i  int
	dc *amqp.DeferredConfirmation
}

// send publishes rows[idx] pipelined on pc, the worker's channel, and waits until
// deadline for their confirms. Past deadline it abandons pc and returns, even with
// publishes still under way.
func (w *worker) send(pc *pubChannel, rows []row, msgs []amqp.Publishing, idx []int, res []result, deadline time.Time) {
	// The publishes go out from a goroutine: a write to a connection that RabbitMQ
	// no longer reads blocks once the socket buffers are full, and the wait for the
	// confirms below must still end at deadline.
	published := make(chan pending, len(idx)) // closed after the last publish
	var stop atomic.Bool                      // publish no more: pc is abandoned
	go func() {
		defer close(published)
		for _, i := range idx {
			if stop.Load() {
				return
			}
			dc, err := pc.ch.PublishWithDeferredConfirm(rows[i].exchange, rows[i].routingKey, true, false, msgs[i])
			if err != nil {
				w.r.log.Debug("publish failed", zap.Int("worker", w.id), errField(err))
				return
			}
			published <- pending{i, dc}
		}
	}()

	// Collect confirms and returns. The broker sends a message's return before its
	// confirm, and the client's reader goroutine hands the return to pc.returns before
	// it resolves the confirm. So a return is buffered by the time its confirm shows as
	// done, and a row counts as confirmed only if its confirm was seen done BEFORE the
	// last drain of the buffer: a return and an ack that arrive later (after a timeout)
	// leave the row unknown, never confirmed.
	pend := make([]pending, 0, len(idx))
	returned := map[string]amqp.Return{}
	returns := pc.returns
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	timedOut := false
wait:
	for next := 0; ; { // pend[:next] have their confirm
		var confirm <-chan struct{}
		switch {
		case next < len(pend):
			confirm = pend[next].dc.Done()
		case published == nil:
			break wait // all published, all confirmed
		}
		select {
		case p, ok := <-published:
			if !ok {
				published = nil
				if len(pend) < len(idx) {
					// A publish failed: the channel or the connection is gone
					// (nothing more goes out on it, the rest stays unpublished),
					// and closing it resolves its pending confirms.
					w.abandon(pc)
				}
				continue
			}
			pend = append(pend, p)
		case <-confirm:
			next++
		case ret, ok := <-returns:
			if !ok {
				returns = nil // channel closed; its confirms resolve now too
				continue
			}
			returned[ret.MessageId] = ret
		case <-timer.C:
			stop.Store(true)
			timedOut = true
			break wait
		}
	}
	// First which confirms are in, then the returns that came before them.
	done := make([]bool, len(pend))
	for k, p := range pend {
		select {
		case <-p.dc.Done():
			done[k] = true
		default:
		}
	}
	for drained := false; !drained && returns != nil; {
		select {
		case ret, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			returned[ret.MessageId] = ret
		default:
			drained = true
		}
	}
	if hook := w.r.afterDrain; hook != nil && timedOut {
		var late []*amqp.DeferredConfirmation
		for k, p := range pend {
			if !done[k] {
				late = append(late, p.dc)
			}
		}
		hook(late)
	}

	for k, p := range pend {
		rw := &rows[p.i]
		if ret, ok := returned[rw.id]; ok {
			res[p.i] = result{outcome: failed, kind: failReturned,
				reason: fmt.Sprintf("returned by the broker: %d %s (exchange %q, routing key %q)", ret.ReplyCode, ret.ReplyText, rw.exchange, rw.routingKey)}
			continue
		}
		if !done[k] {
			continue // no confirm in time (or too late to know of its return): unknown
		}
		switch {
		case p.dc.Acked():
			res[p.i] = result{outcome: confirmed}
		case pc.ch.IsClosed():
			// Closing the channel resolves its pending confirms as nacks; the
			// broker did not say anything about this message.
		default:
			res[p.i] = result{outcome: failed, kind: failNacked, reason: "nacked by the broker"}
		}
	}
	if !timedOut && answeredIn(res, idx) {
		w.r.publishedInTime()
	}
	if timedOut {
		inTime := confirmedIn(res, idx)
		w.r.log.Warn("confirms did not arrive in time; the unconfirmed rows will be published again, in smaller batches",
			zap.Int("worker", w.id), zap.Duration("publish_timeout", w.r.cfg.PublishTimeout),
			zap.Int("unconfirmed", len(idx)-inTime), zap.Int("batch_rows_at_most", w.r.publishTimedOut(inTime)))
		// Late confirms must not be taken for the next batch's. The close is not
		// waited for: on a blocked connection it takes as long as the block, and
		// the batch's transaction is still open.
		w.abandon(pc)
	}
}

// isSoftError reports a channel-level exception the broker raises because of a
// message (a missing exchange, a refused access, a precondition such as size), as
// opposed to a lost connection.
func isSoftError(e *amqp.Error) bool {
	if e == nil || !e.Server {
		return false
	}
	switch e.Code {
	case amqp.ContentTooLarge, amqp.NoConsumers, amqp.AccessRefused, amqp.NotFound, amqp.ResourceLocked, amqp.PreconditionFailed:
		return true
	}
	return false
}

// settle removes the confirmed rows and records the failures in the batch's
// transaction and commits it; false when that failed. The database work uses its own deadline, not ctx: a batch
// is finished even when the relay is stopping.
func (r *Relay) settle(ctx context.Context, b *batch, res []result, start time.Time) bool {
	var (
		refs     []outboxdb.Ref
		failures []outboxdb.Failure
		failedAt = map[string]int{} // index in b.rows of each failed row
		returned int
		nacked   int
		unknowns int
	)
	if n := settleRuns(b.rows, res); n > 0 {
		r.log.Warn("rows of ordering keys were confirmed after an earlier row of their key failed; they stay in the outbox and go again after it, in order",
			zap.Int("rows", n))
	}
	for i, x := range res {
		rw := &b.rows[i]
		switch x.outcome {
		case confirmed:
			refs = append(refs, outboxdb.Ref{ID: rw.id, TID: rw.tid, Rel: b.rel})
		case failed:
			failures = append(failures, outboxdb.Failure{ID: rw.id, Err: x.reason, Delay: r.retry.Delay(rw.attempts + 1), Permanent: x.kind == failPermanent})
			failedAt[rw.id] = i
			switch x.kind {
			case failReturned:
				returned++
			case failNacked:
				nacked++
			}
		default:
			unknowns++
		}
	}
	dbctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dbTimeout)
	defer cancel()
	latencies, states, err := r.q.Settle(dbctx, r.stmts, b.tx, refs, failures, r.cfg.MaxAttempts)
	if err == nil {
		err = b.tx.Commit()
		if err != nil {
			err = fmt.Errorf("commit batch: %w", err)
		}
	}
	if err != nil {
		_ = b.tx.Rollback()
		r.setDBOK(false)
		r.log.Warn("cannot settle a batch; its rows stay in the outbox and will be published again",
			zap.Int("rows", len(b.rows)), zap.Int("confirmed", len(refs)), errField(err))
		return false
	}
	r.setDBOK(true)

	table := r.q.tableName
	r.m.Published.WithLabelValues(table).Add(float64(len(refs)))
	r.beats.published.Add(int64(len(refs)))
	lat := r.m.PublishLatency.WithLabelValues(table)
	for _, l := range latencies {
		lat.Observe(l)
	}
	r.m.Returned.WithLabelValues(table).Add(float64(returned))
	r.m.Nacked.WithLabelValues(table).Add(float64(nacked))
	dead := 0
	for _, s := range states {
		fields := []zap.Field{zap.String("id", s.ID), zap.Int("attempts", s.Attempts)}
		permanent := false
		var exchange, routingKey string
		if i, ok := failedAt[s.ID]; ok {
			permanent = res[i].kind == failPermanent
			rw := &b.rows[i]
			exchange, routingKey = rw.exchange, rw.routingKey
			fields = append(fields, zap.String("reason", res[i].reason), zap.String("exchange", rw.exchange), zap.String("routing_key", rw.routingKey))
			if rw.keyed {
				fields = append(fields, zap.String("ordering_key", rw.orderingKey))
			}
		}
		switch {
		case s.Dead && permanent:
			dead++
			r.log.Error("outbox row can never be published; it is kept as dead, and blocks its ordering key if it has one", fields...)
		case s.Dead:
			dead++
			r.log.Error("outbox row is dead after its last allowed attempt; it is kept, and blocks its ordering key if it has one", fields...)
		default:
			r.logRetry(s.Attempts, exchange, routingKey, fields)
		}
	}
	r.m.DeadTotal.WithLabelValues(table).Add(float64(dead))
	fields := []zap.Field{zap.Int("rows", len(b.rows)), zap.Int("published", len(refs)),
		zap.Int("failed", len(failures)), zap.Int("unconfirmed", unknowns), zap.Duration("took", time.Since(start))}
	if unknowns > 0 {
		r.log.Info("batch settled; rows without a confirm stay in the outbox and will be published again", fields...)
	} else {
		r.log.Debug("batch settled", fields...)
	}
	return true
}
