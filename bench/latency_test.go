package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

const (
	latencyRate     = 500  // messages per second, one per transaction
	latencyMsgs     = 5000 // 10 s at latencyRate
	latencyHighRate = 2000 // the second load
	latencyHighMsgs = 10000
	latencyWriters  = 4 // writer connections taking the scheduled transactions at latencyRate
	idleIntervals   = 5 // poll intervals the idle relay is watched for
)

// benchLatency watches an idle relay's statements for idleIntervals poll intervals, then
// measures commit-to-delivery latency of messages written at a steady latencyRate.
func benchLatency(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate outbox: %v", err)
	}
	m, reg := newMetrics()
	brk := e.startBroker(m)
	cons := e.dial("consumer")
	queue := e.queue(cons, "bench_latency")
	relayDB, counter := e.countingPool()

	poll := relay.DefaultPollInterval
	cfg := defaultRelayConfig(table)
	cfg.ListenDatabaseURL = e.dbURL
	rl, err := relay.New(relayDB, cfg, relay.WithConnection(brk), relay.WithLogger(e.log), relay.WithRegisterer(reg))
	if err != nil {
		b.Fatalf("relay: %v", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rl.Run(runCtx) }()
	stopRelay := func() error {
		stop()
		if err := <-done; err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		return nil
	}

	// Idle: let start-up settle, then count what the relay's pool sends.
	time.Sleep(2 * poll)
	idleAct, err := activity(ctx, e.db)
	if err != nil {
		b.Fatal(err)
	}
	first := counter.snapshot()
	prev := first
	perInterval := make([]int, idleIntervals)
	for k := range perInterval {
		time.Sleep(poll)
		now := counter.snapshot()
		perInterval[k] = now.sub(prev).total()
		prev = now
	}
	idle := prev.sub(first)
	idleActAfter, err := activity(ctx, e.db)
	if err != nil {
		b.Fatal(err)
	}
	polls := float64(idle.total()) / idleIntervals

	// Load: latencyRate transactions per second, one row each. A listener of our own
	// counts the writers' notifications (the relay's listener gets the same ones).
	var notified atomic.Int64
	listenUntilCleanup(b, e.dbURL, table.Channel(), &notified)
	loadStart := counter.snapshot()
	lat, achieved, err := steadyLoad(ctx, e, cons, queue, table, latencyRate, latencyMsgs)
	loaded := counter.snapshot().sub(loadStart)
	notifies := notified.Load()
	var hiLat []time.Duration
	var hiAchieved float64
	var hiNotifies int64
	if err == nil {
		time.Sleep(2 * poll) // the relay goes back to sleep
		before := notified.Load()
		hiLat, hiAchieved, err = steadyLoad(ctx, e, cons, queue, table, latencyHighRate, latencyHighMsgs)
		hiNotifies = notified.Load() - before
	}
	if serr := stopRelay(); serr != nil && err == nil {
		err = serr
	}
	var floorLat, floorHiLat []time.Duration
	if err == nil {
		floorLat, floorHiLat, err = latencyFloor(ctx, e, cons, queue)
	}
	if err != nil {
		b.Fatal(err)
	}
	sorted := sortedCopy(lat)
	p50, p99, worst := percentile(sorted, 0.50), percentile(sorted, 0.99), sorted[len(sorted)-1]

	r := newReport(fmt.Sprintf("Commit-to-delivery latency at %d msg/s and idle polling, default settings (BenchmarkRelayLatency)", latencyRate),
		"measure", "value", "target")
	r.row("commit-to-delivery p50", fmtMS(p50), "")
	r.row("commit-to-delivery p99", fmtMS(p99), "≤ 5 ms")
	r.row("commit-to-delivery max", fmtMS(worst), "")
	r.row("distribution", buckets(sorted), "")
	r.row("writer rate achieved", fmt.Sprintf("%.0f msg/s", achieved), fmt.Sprintf("%d msg/s", latencyRate))
	r.row("writer transactions that sent a NOTIFY", fmt.Sprintf("%d of %d (%.1f%%)", notifies, latencyMsgs, 100*float64(notifies)/latencyMsgs), "")
	hiSorted := sortedCopy(hiLat)
	hiP99 := percentile(hiSorted, 0.99)
	r.row(fmt.Sprintf("at %s msg/s: commit-to-delivery p50 / p99 / max", group(latencyHighRate)),
		fmtMS(percentile(hiSorted, 0.50))+" / "+fmtMS(hiP99)+" / "+fmtMS(hiSorted[len(hiSorted)-1]), "p99 ≤ 10 ms")
	r.row(fmt.Sprintf("at %s msg/s: writer rate achieved", group(latencyHighRate)), fmt.Sprintf("%.0f msg/s", hiAchieved), fmt.Sprintf("%d msg/s", latencyHighRate))
	r.row(fmt.Sprintf("at %s msg/s: writer transactions that sent a NOTIFY", group(latencyHighRate)),
		fmt.Sprintf("%d of %d (%.1f%%)", hiNotifies, latencyHighMsgs, 100*float64(hiNotifies)/latencyHighMsgs), "")
	floorSorted, floorHiSorted := sortedCopy(floorLat), sortedCopy(floorHiLat)
	r.row(fmt.Sprintf("floor, no relay (the writer publishes right after Commit), at %d msg/s: p50 / p99 / max", latencyRate),
		fmtMS(percentile(floorSorted, 0.50))+" / "+fmtMS(percentile(floorSorted, 0.99))+" / "+fmtMS(floorSorted[len(floorSorted)-1]), "")
	r.row(fmt.Sprintf("floor, no relay, at %s msg/s: p50 / p99 / max", group(latencyHighRate)),
		fmtMS(percentile(floorHiSorted, 0.50))+" / "+fmtMS(percentile(floorHiSorted, 0.99))+" / "+fmtMS(floorHiSorted[len(floorHiSorted)-1]), "")
	r.row("relay: database connections opened during the load", fmt.Sprint(loaded.stmts[newConnection]), "")
	r.row("idle relay: statements per poll interval", fmt.Sprintf("%.1f (per interval: %v)", polls, perInterval), "≤ 1")
	r.row("idle relay: transactions per poll interval", fmt.Sprintf("%.1f", float64(idle.txs)/idleIntervals), "")
	r.note("Load: %s messages, one per transaction, scheduled every %d ms and taken by %d writer connections (%d at %s msg/s); latency = the consumer's receive time - the writer's Commit() return, one process, monotonic clock.",
		group(latencyMsgs), time.Second/latencyRate/time.Millisecond, latencyWriters, writersFor(latencyHighRate), group(latencyHighRate))
	r.note("Idle: statements the relay's *sql.DB sent (counted in a database/sql driver wrapper) over %d poll intervals after 2 intervals of settling:", idleIntervals)
	idle.detail(r)
	r.note("Other connections of the database during the idle window (LISTEN etc.): %s", activityDiff(idleAct, idleActAfter))
	r.note("Under load: the relay's pool ran %d transactions, %.2f statements per message:", loaded.txs, float64(loaded.total())/latencyMsgs)
	loaded.detail(r)
	e.noteLoad(r)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(hiP99), "p99-ms-2000")
	b.ReportMetric(ms(worst), "max-ms")
	b.ReportMetric(polls, "polls/interval")
	return r
}

// steadyLoad writes n outbox rows at rate per second, one per transaction, and
// returns each message's commit-to-delivery latency and the achieved write rate.
func steadyLoad(ctx context.Context, e *env, cons *amqp.Connection, queue string, table pg.Table, rate, n int) ([]time.Duration, float64, error) {
	return steadyLoadThen(ctx, e, cons, queue, table, rate, n, nil)
}

// steadyLoadThen is steadyLoad with afterCommit, when not nil, called by the writer
// with the message's ID right after each commit (the floor: the writer publishes).
func steadyLoadThen(ctx context.Context, e *env, cons *amqp.Connection, queue string, table pg.Table, rate, n int, afterCommit func(ctx context.Context, id string) error) ([]time.Duration, float64, error) {
	ids := make([]uuid.UUID, n)
	names := make([]string, n)
	for i := range ids {
		ids[i] = uuid.New()
		names[i] = ids[i].String()
	}
	s, err := newSink(cons, queue, n, names)
	if err != nil {
		return nil, 0, err
	}
	w, err := outbox.NewWriter(table.String())
	if err != nil {
		return nil, 0, fmt.Errorf("outbox writer: %w", err)
	}
	writers, err := sql.Open("postgres", e.dbURL)
	if err != nil {
		return nil, 0, fmt.Errorf("open writers' pool: %w", err)
	}
	defer writers.Close()
	nw := writersFor(rate)
	writers.SetMaxOpenConns(nw)
	writers.SetMaxIdleConns(nw)
	if err := warm(ctx, writers, nw); err != nil {
		return nil, 0, err
	}

	commitAt := make([]time.Time, n)
	jobs := make(chan int, n)
	errs := make([]error, nw)
	var wg sync.WaitGroup
	for g := range nw {
		wg.Go(func() {
			for i := range jobs {
				if errs[g] != nil {
					continue
				}
				tx, err := writers.BeginTx(ctx, nil)
				if err != nil {
					errs[g] = fmt.Errorf("begin: %w", err)
					continue
				}
				if _, err := w.Write(ctx, tx, outbox.Message{ID: ids[i], RoutingKey: queue, Payload: payload(i)}); err != nil {
					_ = tx.Rollback()
					errs[g] = err
					continue
				}
				if err := tx.Commit(); err != nil {
					errs[g] = fmt.Errorf("commit: %w", err)
					continue
				}
				commitAt[i] = time.Now()
				if afterCommit != nil {
					if err := afterCommit(ctx, names[i]); err != nil {
						errs[g] = err
					}
				}
			}
		})
	}
	period := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	var last time.Time
	for _, t := range commitAt {
		if t.After(last) {
			last = t
		}
	}
	achieved := float64(n) / last.Sub(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.wait(wctx); err != nil {
		return nil, 0, err
	}
	lat := make([]time.Duration, n)
	for i := range lat {
		lat[i] = s.recvAt[i].Sub(commitAt[i])
	}
	return lat, achieved, nil
}

// latencyFloor measures what the machine gives without a relay: the same writers and
// consumer, each writer publishing its message on a channel of its own connection
// right after Commit (into an outbox table no relay reads). The relay's latency is
// this floor plus its wake-up, claim and publish. The rows stay in that table.
func latencyFloor(ctx context.Context, e *env, cons *amqp.Connection, queue string) (lo, hi []time.Duration, err error) {
	table := pg.Table{Name: "latency_floor_outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		return nil, nil, fmt.Errorf("migrate %s: %w", table, err)
	}
	pub := e.dial("floor")
	defer pub.Close()
	ch, err := pub.Channel() // Publish is safe for concurrent use
	if err != nil {
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	publish := func(ctx context.Context, id string) error {
		return ch.PublishWithContext(ctx, "", queue, true, false, amqp.Publishing{MessageId: id, DeliveryMode: amqp.Persistent, Body: payload(0)})
	}
	if lo, _, err = steadyLoadThen(ctx, e, cons, queue, table, latencyRate, latencyMsgs, publish); err != nil {
		return nil, nil, err
	}
	if hi, _, err = steadyLoadThen(ctx, e, cons, queue, table, latencyHighRate, latencyHighMsgs, publish); err != nil {
		return nil, nil, err
	}
	return lo, hi, nil
}

// writersFor returns the writer connections that take a steady load of rate
// transactions per second: latencyWriters at latencyRate, more in proportion, so that
// a writer's own commit (an fsync with synchronous_commit on) does not cap the rate.
func writersFor(rate int) int { return max(latencyWriters, latencyWriters*rate/latencyRate) }

// warm opens n connections of db.
func warm(ctx context.Context, db *sql.DB, n int) error {
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("open connection: %w", err)
		}
		conns = append(conns, c)
		if err := c.PingContext(ctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
	return nil
}

// backend is one server connection as pg_stat_activity shows it.
type backend struct {
	queryStart time.Time
	query      string
}

// activity returns the other client connections of the benchmark's database by pid.
func activity(ctx context.Context, db *sql.DB) (map[int]backend, error) {
	rs, err := db.QueryContext(ctx, `SELECT pid, coalesce(query_start, backend_start), left(regexp_replace(query, '\s+', ' ', 'g'), 60)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	defer rs.Close()
	out := map[int]backend{}
	for rs.Next() {
		var pid int
		var b backend
		if err := rs.Scan(&pid, &b.queryStart, &b.query); err != nil {
			return nil, fmt.Errorf("read pg_stat_activity: %w", err)
		}
		out[pid] = b
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	return out, nil
}

// activityDiff describes which connections ran a statement between two snapshots.
func activityDiff(before, after map[int]backend) string {
	active, quiet := 0, 0
	var listeners []string
	for pid, a := range after {
		b, ok := before[pid]
		changed := !ok || !a.queryStart.Equal(b.queryStart)
		if changed {
			active++
		} else {
			quiet++
		}
		if strings.HasPrefix(strings.ToUpper(a.query), "LISTEN") {
			state := "sent nothing"
			if changed {
				state = "sent a statement"
			}
			listeners = append(listeners, fmt.Sprintf("listener pid %d %s", pid, state))
		}
	}
	return fmt.Sprintf("%d ran a statement, %d did not; %s", active, quiet, strings.Join(listeners, ", "))
}

// buckets counts sorted latencies per range: "≤2 ms: 3,012 · 2–5 ms: 1,700 · …".
func buckets(sorted []time.Duration) string {
	bounds := []time.Duration{2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond}
	var parts []string
	lo, i := time.Duration(0), 0
	for _, hi := range append(bounds, time.Duration(1<<62)) {
		n := 0
		for ; i < len(sorted) && sorted[i] <= hi; i++ {
			n++
		}
		switch {
		case lo == 0:
			parts = append(parts, fmt.Sprintf("≤%d ms: %d", hi/time.Millisecond, n))
		case hi == time.Duration(1<<62):
			parts = append(parts, fmt.Sprintf(">%d ms: %d", lo/time.Millisecond, n))
		default:
			parts = append(parts, fmt.Sprintf("%d–%d ms: %d", lo/time.Millisecond, hi/time.Millisecond, n))
		}
		lo = hi
	}
	return strings.Join(parts, " · ")
}
