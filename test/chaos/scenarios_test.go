package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// keys is the number of ordering keys of the writer's load.
const keys = 20

// pipeline starts the consuming side (inbox processes and processors) and then the
// relays, each ready.
func (r *rig) pipeline(relays, inboxes, processors int, ordered bool) {
	r.t.Helper()
	for range inboxes {
		r.startInbox("inbox")
	}
	r.startProcessors(processors, ordered)
	for range relays {
		r.startRelay(true)
	}
}

// standard is the writer's usual load: count orders at rate, a tenth rolled back.
func standard(count, rate int) load {
	return load{count: count, rate: rate, keys: keys, rollback: 0.1, deadline: 2 * time.Minute}
}

// waitWritten waits until the writer has attempted n orders, or finished.
func (r *rig) waitWritten(w *writer, n int64) {
	r.t.Helper()
	for w.attempted.Load() < n {
		select {
		case <-w.done:
			return
		case <-r.ctx.Done():
			r.t.Fatalf("waiting for %d orders: %v", n, r.ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pause waits d (the length of a fault, not a synchronisation) or until the scenario
// ends.
func (r *rig) pause(d time.Duration) {
	select {
	case <-r.ctx.Done():
	case <-time.After(d):
	}
}

// settleTime bounds the settle period.
func settleTime(sz size) time.Duration { return sz.dur(45*time.Second, 2*time.Minute) }

// 1. The relay is SIGKILLed at random moments while orders are written, and restarted
// at once each time.
func relayKilled(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.pipeline(1, 1, 1, true)
	kills := sz.pick(5, 20)
	w := r.write(standard(sz.pick(1500, 6000), 300))
	for range kills {
		r.pause(time.Duration(100+rand.IntN(sz.pick(900, 1100))) * time.Millisecond)
		r.killRelay(0)
	}
	r.note("relay SIGKILLed %d times, %d orders attempted meanwhile", kills, w.attempted.Load())
	w.wait()
	r.settle(settleTime(sz))
	return r.finish(fmt.Sprintf("1. relay SIGKILLed ×%d", kills))
}

// 2. The broker is stopped (gracefully) and started again while orders are written.
func brokerRestarted(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.pipeline(1, 1, 1, true)
	n := sz.pick(1500, 4000)
	w := r.write(standard(n, 200))
	cycles := sz.pick(1, 2)
	for i := 1; i <= cycles; i++ {
		r.waitWritten(w, int64(n*i/(cycles+1)))
		srv.mq.Stop(t)
		r.crashed = true
		r.pause(2 * time.Second)
		srv.mq.Start(t)
	}
	r.note("broker stopped and started %d times mid-stream", cycles)
	w.wait()
	r.settle(settleTime(sz))
	return r.finish("2. RabbitMQ stopped and started")
}

// 3. PostgreSQL crashes (immediate shutdown, as `pg_ctl restart -m immediate` does:
// SIGQUIT to the postmaster, no checkpoint, recovery from WAL on start) while orders
// are written; relay, inbox, writer and processor all lose their connections.
func postgresCrashed(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.pipeline(1, 1, 1, true)
	n := sz.pick(1500, 4000)
	w := r.write(standard(n, 200))
	cycles := sz.pick(1, 3)
	for i := 1; i <= cycles; i++ {
		r.waitWritten(w, int64(n*i/(cycles+1)))
		srv.pg.Kill(t)
		r.crashed = true
		r.pause(time.Second)
		srv.pg.Start(t)
	}
	w.wait()
	r.note("PostgreSQL restarted in immediate mode %d times mid-stream; %d writer transactions failed and were retried", cycles, w.failed.Load())
	r.settle(settleTime(sz))
	return r.finish("3. PostgreSQL restarted -m immediate")
}

// 4. Both links of the sidecar (to PostgreSQL and to RabbitMQ) go through toxiproxy:
// latency, a bandwidth limit, a cut, then a half-open connection that never answers.
func networkFaults(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	pgp := testenv.Proxy(t, srv.pg.Addr())
	mqp := testenv.Proxy(t, srv.mq.Addr())
	r.procDBURL = pgp.URL(r.dbURL)
	r.procAMQPURL = mqp.URL(srv.mq.URL())
	r.pipeline(1, 1, 1, true)
	relay := r.relays[0]
	n := sz.pick(3000, 8000)
	w := r.write(standard(n, 100))
	both := []*testenv.TCPProxy{pgp, mqp}
	step := sz.dur(2*time.Second, 5*time.Second)
	for _, p := range both {
		p.Latency(t, 100*time.Millisecond, 50*time.Millisecond)
	}
	r.pause(step)
	for _, p := range both {
		p.Restore(t)
		p.Bandwidth(t, 16)
	}
	r.pause(step)
	for _, p := range both {
		p.Restore(t)
		p.Cut(t)
	}
	r.pause(step)
	for _, p := range both {
		p.Restore(t)
	}
	r.pause(step)
	// Half-open: connections stay up and nothing answers, for longer than the publish
	// timeout and the AMQP heartbeat timeout. Does the relay notice (readyz 503)?
	stall := sz.dur(12*time.Second, 45*time.Second)
	for _, p := range both {
		p.Stall(t)
	}
	began := time.Now()
	noticed := time.Duration(0)
	for time.Since(began) < stall && r.ctx.Err() == nil {
		if noticed == 0 && !relay.Ready() {
			noticed = time.Since(began)
		}
		r.pause(200 * time.Millisecond)
	}
	if noticed > 0 {
		r.note("half-open links: the relay's /readyz turned 503 after %.1fs", noticed.Seconds())
	} else {
		r.note("half-open links: the relay's /readyz stayed 200 for the whole %s", stall)
	}
	for _, p := range both {
		p.Restore(t)
	}
	r.crashed = true
	w.wait()
	r.note("latency 100±50 ms, 16 KB/s, cut, then half-open for %s, on both links", stall)
	r.settle(settleTime(sz))
	return r.finish("4. toxiproxy: cut, latency, bandwidth, half-open")
}

// 5. The broker raises its memory alarm while `sidebox run` relays and consumes on it.
// Publishing must pause without burning attempts, the inbox must keep draining the
// queue, and all must resume when the alarm clears.
func memoryAlarm(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.startProcessors(1, true)

	// A backlog in the queue for the inbox to drain during the alarm.
	backlog := sz.pick(3000, 8000)
	relay := r.startRelay(true)
	w := r.write(standard(backlog, 0))
	w.wait()
	r.waitCond("the backlog published", time.Minute, func(c counts) bool { return c.outboxLive == 0 })
	if err := relay.Stop(30 * time.Second); err != nil {
		r.fail("%v", err)
	}
	r.relays = nil
	depth, _ := r.queueDepth()

	srv.mq.MemoryAlarm(t, true)
	defer srv.mq.MemoryAlarm(t, false)
	r.waitAlarm(true)

	run := r.startInbox("run")
	w2 := r.write(standard(sz.pick(600, 2000), 50))
	window := sz.dur(10*time.Second, 30*time.Second)
	began := time.Now()
	drained := time.Duration(0)
	for time.Since(began) < window && r.ctx.Err() == nil {
		if d, err := r.queueDepth(); err == nil && d == 0 && drained == 0 {
			drained = time.Since(began)
		}
		r.pause(200 * time.Millisecond)
	}
	var maxAttempts, dead int
	if err := r.db.QueryRowContext(ctx, `SELECT coalesce(max(attempts), 0), count(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox`).Scan(&maxAttempts, &dead); err != nil {
		t.Fatal(err)
	}
	stored, _ := run.Counter("sidebox_inbox_stored_total")
	if drained == 0 {
		r.failCheck("alarm-drain", "inbox did not drain the queue during the alarm: %d of %d backlog messages stored in %s", int(stored), depth, window)
	} else {
		r.note("inbox drained a %d-message backlog %.1fs into the alarm", depth, drained.Seconds())
	}
	if maxAttempts > 0 || dead > 0 {
		r.fail("attempts burnt during the alarm: max attempts %d, %d dead", maxAttempts, dead)
	} else {
		r.note("publishing paused during the %s alarm without burning attempts", window)
	}
	srv.mq.MemoryAlarm(t, false)
	r.waitAlarm(false)
	w2.wait()
	r.settle(settleTime(sz))
	return r.finish("5. broker memory alarm, sidebox run")
}

// waitAlarm waits until the broker's memory alarm is raised (on) or cleared.
func (r *rig) waitAlarm(on bool) {
	r.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out := r.srv.mq.Ctl(r.t, "eval", "rabbit_alarm:get_alarms().")
		if strings.Contains(out, "memory") == on {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("memory alarm not %v after a minute: %s", on, out)
		}
		r.pause(200 * time.Millisecond)
	}
}

// waitCond polls the counts until cond holds; the test fails after timeout.
func (r *rig) waitCond(what string, timeout time.Duration, cond func(counts) bool) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := r.count(r.ctx)
		if err == nil && cond(c) {
			return
		}
		if time.Now().After(deadline) || r.ctx.Err() != nil {
			r.t.Fatalf("waiting for %s: %v, last counts %+v", what, err, c)
		}
		r.pause(100 * time.Millisecond)
	}
}

// 6. The relay's link to the broker stalls for longer than the publish timeout while
// some rows are unroutable (returned by the broker): defect 1's path.
func publishStall(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	mqp := testenv.Proxy(t, srv.mq.Addr())
	r.relayEnv = []string{"SIDEBOX_AMQP_URL=" + mqp.URL(srv.mq.URL()), "SIDEBOX_PUBLISH_TIMEOUT=1s"}
	r.pipeline(1, 1, 1, true)
	n := sz.pick(2000, 5000)
	l := standard(n, 200)
	l.unrouted = 0.2
	w := r.write(l)
	// Each cycle: a stall of four publish timeouts (connections then closed), and a
	// slow link whose round trip is about the publish timeout, so that confirms and
	// returns arrive around the deadline.
	cycles := sz.pick(1, 3)
	slow := sz.dur(8*time.Second, 20*time.Second)
	for i := 1; i <= cycles; i++ {
		r.waitWritten(w, int64(n*i/(cycles+1)))
		mqp.Stall(t)
		r.pause(4 * time.Second) // four publish timeouts
		mqp.Restore(t)
		mqp.Latency(t, 500*time.Millisecond, 400*time.Millisecond)
		r.pause(slow)
		mqp.Restore(t)
	}
	r.crashed = true
	w.wait()
	r.note("relay↔broker %d times stalled for 4 s, then slow for %s (round trip 1±0.8 s); publish timeout 1 s; %.0f%% of rows unroutable",
		cycles, slow, l.unrouted*100)
	r.settle(settleTime(sz))
	var unrouted, unroutedDead int
	if err := r.db.QueryRowContext(ctx, `SELECT count(*) FROM outbox WHERE routing_key = $1`, unroutedKey).Scan(&unrouted); err != nil {
		t.Fatal(err)
	}
	if err := r.db.QueryRowContext(ctx, `SELECT count(*) FROM outbox WHERE routing_key = $1 AND dead_at IS NOT NULL`, unroutedKey).Scan(&unroutedDead); err != nil {
		t.Fatal(err)
	}
	if unrouted != unroutedDead {
		r.fail("%d unroutable rows in the outbox, only %d dead", unrouted, unroutedDead)
	}
	return r.finish("6. publish stall > timeout with unroutable rows")
}

// 7. A transaction of the service holds its snapshot (the xmin horizon) open while
// orders keep coming: the relay's deleted rows cannot be vacuumed meanwhile.
func longTransaction(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.pipeline(1, 1, 1, true)
	hold := sz.dur(10*time.Second, 90*time.Second)
	w := r.write(standard(sz.pick(2000, 18000), 200))
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`); err != nil {
		t.Fatal(err)
	}
	var seen int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM orders`).Scan(&seen); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	maxBacklog := 0
	for time.Since(began) < hold && r.ctx.Err() == nil {
		if c, err := r.count(ctx); err == nil {
			maxBacklog = max(maxBacklog, c.outboxLive)
		}
		r.pause(500 * time.Millisecond)
	}
	var deadTuples int64
	_ = r.db.QueryRowContext(ctx, `SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'`).Scan(&deadTuples)
	_ = tx.Rollback()
	r.note("snapshot held %s while writing; outbox backlog at most %d rows, %d dead tuples in the outbox when released", hold, maxBacklog, deadTuples)
	w.wait()
	r.settle(settleTime(sz))
	return r.finish("7. long transaction holding xmin")
}

// 9. Bad rows and bad input among normal traffic: a 16 MiB payload (fits), a payload
// over the broker's max_message_size, headers the broker or the protocol refuses, an
// exchange that does not exist, deliveries without message_id straight into the queue,
// and a run of large payloads that the inbox stores in batches.
func badInput(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys)
	r.pipeline(1, 1, 1, true)
	w := r.write(standard(sz.pick(1000, 3000), 200))

	const mib = 1 << 20
	special := []struct {
		what string
		msg  outbox.Message
		pad  int
	}{
		{"16 MiB payload", outbox.Message{}, 16 * mib},
		{"24 MiB payload, over max_message_size", outbox.Message{}, 24 * mib},
		{"header name of 300 bytes", outbox.Message{Headers: map[string]any{strings.Repeat("h", 300): 1}}, 0},
		{"header value of 200 KiB, over frame_max", outbox.Message{Headers: map[string]any{"big": strings.Repeat("v", 200*1024)}}, 0},
		{"exchange that does not exist", outbox.Message{Exchange: "chaos_no_such_exchange"}, 0},
	}
	for _, s := range special {
		if err := r.placeSpecial(ctx, s.msg, s.pad); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	noID := 3
	err := r.withChannel(func(ch *amqp.Channel) error {
		for i := range noID {
			body, _ := json.Marshal(event{OrderID: -1 - int64(i)})
			if err := ch.PublishWithContext(ctx, "", r.queue, false, false, amqp.Publishing{Body: body, DeliveryMode: amqp.Persistent}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	w.wait()

	// Large payloads that wait in the queue while the inbox is down: the next inbox
	// gets them all at once and stores them in batches (the full form's exceed 1 GiB
	// together, PostgreSQL's limit for one value).
	large, largeSize := sz.pick(16, 136), sz.pick(2, 8)*mib
	r.stopInbox(r.inboxes[0])
	for range large {
		if err := r.placeSpecial(ctx, outbox.Message{}, largeSize); err != nil {
			t.Fatal(err)
		}
	}
	r.waitQueued(large, 3*time.Minute)
	in := r.startInbox("inbox")

	r.note("sent: %s; %d payloads of %d MiB queued while the inbox was down; %d deliveries without message_id",
		"16 MiB payload, 24 MiB payload (max_message_size 20 MiB), 300-byte header name, 200 KiB header value, missing exchange",
		large, largeSize/mib, noID)
	// The broker closes the publishing channel on a row it refuses; rows of the same
	// batch not yet confirmed on it are published again.
	r.crashed = true
	r.settle(settleTime(sz))
	if peak, err := in.PeakMemory(); err == nil {
		r.note("peak memory of the inbox that stored the large payloads: %d MiB", peak/mib)
	}
	return r.finish("9. bad rows and input")
}

// waitQueued waits until the queue holds at least n messages.
func (r *rig) waitQueued(n int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d, err := r.queueDepth()
		if err == nil && d >= n {
			return
		}
		if time.Now().After(deadline) || r.ctx.Err() != nil {
			r.t.Fatalf("waiting for %d messages in the queue: %d, %v", n, d, err)
		}
		r.pause(200 * time.Millisecond)
	}
}

// placeSpecial commits one order whose outbox row is msg (no ordering key, so a dead
// row blocks no one), its payload padded with pad bytes. The row is inserted with
// plain SQL, as a service in any language may, so that rows outbox.Write would refuse
// reach the relay too.
func (r *rig) placeSpecial(ctx context.Context, msg outbox.Message, pad int) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	id := uuid.New()
	var orderID int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO orders (message_id) VALUES ($1) RETURNING id`, id).Scan(&orderID); err != nil {
		return err
	}
	if msg.Exchange == "" {
		msg.Exchange = r.exchange
	}
	payload, err := json.Marshal(event{OrderID: orderID, Pad: strings.Repeat("x", pad)})
	if err != nil {
		return err
	}
	headers := []byte("{}")
	if msg.Headers != nil {
		if headers, err = json.Marshal(msg.Headers); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (id, exchange, routing_key, payload, message_type, headers)
VALUES ($1, $2, $3, $4, 'order.created', $5)`, id, msg.Exchange, routingKey, payload, string(headers)); err != nil {
		return err
	}
	return tx.Commit()
}

// 10. Two relays and two inbox consumers on one queue, two ordered processors; a relay
// and the active inbox consumer are SIGKILLed now and then. Per-key order is checked at the effect. The queue is
// declared with x-single-active-consumer, as docs/inbox.md asks for per-key order with
// several consumers: without it RabbitMQ hands one key's messages round robin to both,
// and they store them in either order.
func twoOfEach(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	r := newRig(t, ctx, srv, keys, withQueueArgs(amqp.Table{"x-single-active-consumer": true}))
	r.pipeline(2, 2, 2, true)
	n := sz.pick(1500, 6000)
	w := r.write(standard(n, 300))
	kills := sz.pick(1, 4)
	for i := 1; i <= kills; i++ {
		r.waitWritten(w, int64(n*i/(kills+1)))
		r.killRelay(i % 2)
		// The first inbox started is the active consumer while it lives.
		r.killInbox(r.inboxes[0])
	}
	w.wait()
	r.note("relays SIGKILLed %d times, and each time the oldest inbox consumer (the active one)", kills)
	r.settle(settleTime(sz))
	r.checkOrder()
	return r.finish("10. two relays, two inboxes, ordered")
}
