package relay

import (
	"context"
	"time"
)

// Streaming: NOTIFY takes one lock for the whole instance at commit, so notifying
// writers commit one at a time. Once rows come in a stream (two claims less than
// streamQuiet apart found rows, or the relay fell behind), the relay keeps the wake-up
// flag down, so that writers send no NOTIFY, and polls instead: a peek (one cheap
// statement) every streamGap while claims find nothing, and a claim when the peek sees
// a due row. After streamQuiet without rows it raises the
// flag, claims once more, and sleeps until a notification (see dispatcher). The
// measured trade-off is in docs/DESIGN.md ("Streaming wake-ups").
const (
	// streamGap is the pause between polls while streaming: the latency a row written
	// during a stream gets from it. 1 ms rather than 2 (growing from 1) took the rows
	// delivered 5 to 10 ms after their commit at 500 msg/s from 5-7 % to 1-2 %, for
	// about 10 % more statements per message (docs/DESIGN.md, "Streaming wake-ups").
	streamGap = time.Millisecond
	// streamQuiet is how long without rows ends a stream, and how close two claims
	// that find rows must be to start one. An isolated message does not start a
	// stream: it costs its writer one uncontended NOTIFY.
	streamQuiet = 100 * time.Millisecond
)

// wakeState is the dispatcher's streaming state.
type wakeState struct {
	streaming bool  // the flag is kept down and the relay polls
	yielded   bool  // the flag went down under this sleeping relay
	flag      int64 // the flag as the last claim or peek read it
	// served: a claim found rows since this relay last saw its raised flag taken. A
	// relay that finds the flag taken and no rows leaves the writers to the relay that
	// serves them (see yield).
	served bool
}

// found is called after a claim that found rows, with the start of the previous claim
// that found rows (zero: none). drained: the claim came back full or every worker is
// busy. It reports whether the relay streams.
func (d *dispatcher) found(prev, now time.Time, drained bool) bool {
	w := &d.wk
	w.served = true
	if !w.streaming && !d.r.polled.Load() {
		w.streaming = drained || (!prev.IsZero() && now.Sub(prev) < streamQuiet)
	}
	return w.streaming
}

// keepStreaming reports, after an empty claim, whether the stream goes on: rows were
// found less than streamQuiet ago. Otherwise the stream ends and the flag goes up.
func (d *dispatcher) keepStreaming() bool {
	w := &d.wk
	if w.streaming && !d.r.polled.Load() && time.Since(d.foundAt) < streamQuiet {
		return true
	}
	w.streaming = false
	return false
}

// streamWait returns the pause before the next poll while streaming: streamGap, never
// past the next due row.
func (d *dispatcher) streamWait(due time.Duration) time.Duration {
	if due > 0 && due < streamGap {
		return due
	}
	return streamGap
}

// Values of the wake-up flag (migration 0006). A writer that commits while the flag is
// up moves it to flagTaken (nextval: exactly one writer gets flagTaken) and notifies;
// later writers see it taken and do not notify.
const (
	flagDown  = 0 // lowered by a relay that streams or polls
	flagUp    = 1 // raised by a sleeping relay: the next writer notifies
	flagTaken = 2 // and more: taken by a writer, whose notification wakes the relays
)

// sawFlag records the wake-up flag as a claim or a peek read it. Lowered while this
// relay had it up: another relay of the table streams (or the database lost it); this
// one leaves it down for a poll interval (see yield) and raises it again then. Taken
// by a writer: the writer's notification wakes the relay, and writers stay quiet until
// the relay raises the flag again, once it has caught up. Up while this relay streams:
// another relay raised it on going to sleep; the streaming relay lowers it again, so
// that writers do not notify.
func (d *dispatcher) sawFlag(ctx context.Context, v int64) {
	d.wk.flag = v
	switch {
	case v == flagDown:
		d.wk.yielded = d.wk.yielded || d.flagSet
		d.flagSet = false
	case v >= flagTaken:
		if d.flagSet {
			d.wk.served = false // taken from under this relay: by whose rows, we shall see
		}
		d.flagSet = false
	case d.wk.streaming && !d.flagSet:
		d.r.flag.clear(context.WithoutCancel(ctx), d.r.log)
	}
}

// yield reports that this relay, with nothing to claim, should leave the flag alone
// and sleep a poll interval (or until a notification) rather than raise it:
//   - once, after the flag went down under it while it slept: rather than raising it
//     against a streaming relay that lowers it at once;
//   - while the flag is taken and this relay found no rows since it was taken: another
//     relay serves those writers (or the taker's commit is not visible yet, and its
//     notification is on its way). Raising it would only let the next writer take it
//     again and notify, round after round, while the other relay streams.
func (d *dispatcher) yield() bool {
	y := d.wk.yielded || d.wk.flag >= flagTaken && !d.wk.served
	d.wk.yielded = false
	return y
}

// peek is run when the dispatcher's sleep timer fires with nothing in flight: one
// statement instead of a claim's transaction. It returns how much longer to sleep, or
// 0 when a claim is due: a row is due (or the peek failed; the claim reports it), the
// flag went down under a sleeping relay, or a stream's quiet time is over.
func (d *dispatcher) peek(ctx context.Context) time.Duration {
	r := d.r
	if d.inflight.Load() > 0 || ctx.Err() != nil {
		return 0
	}
	pctx, cancel := context.WithTimeout(ctx, dbTimeout)
	p, err := r.q.Peek(pctx, r.db)
	cancel()
	r.peeks.Add(1)
	if err != nil || p.Due {
		return 0
	}
	r.setDBOK(true)
	d.sawFlag(ctx, p.Flag)
	switch {
	case r.polled.Load():
		return d.pollWait(ctx, p.Next)
	case d.wk.streaming:
		if !d.keepStreaming() {
			return 0 // claim: it comes back empty, then the flag goes up
		}
		return d.streamWait(p.Next)
	case !d.flagSet && !d.yield():
		return 0 // raise it again
	}
	// Asleep with the flag up: this peek was the poll, or the settle claim once its
	// time has come.
	wait := r.cfg.PollInterval
	if p.Next > 0 && p.Next < wait {
		wait = p.Next
	}
	if !d.flagSet {
		d.settleAt = time.Time{} // another relay streams: nothing to settle
	}
	if !d.settleAt.IsZero() {
		if left := time.Until(d.settleAt); left > 0 {
			return max(min(wait, left), time.Millisecond)
		}
		d.settleAt = time.Time{}
		r.idle.Store(true)
	}
	return wait
}
