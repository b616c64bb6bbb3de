package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// BenchmarkWriterWakeupRelay: writers' transactions per second with the wake-up trigger
// and without it, each beside a running relay (default settings, LISTEN connection):
// writers offered 500 and 1,500 tx/s, and bursts at full speed with the relay asleep
// between them; NOTIFYs per writer transaction for each.
func BenchmarkWriterWakeupRelay(b *testing.B) {
	for range b.N {
		emit(b, benchWakeupRelay(b))
	}
}

const (
	relayLoadSeconds = 3   // per paced slice
	relayLoadSlices  = 4   // slices per variant and load, in alternating order
	burstTxs         = 400 // transactions per burst
	bursts           = 6   // bursts per variant and slice
	burstPause       = 600 * time.Millisecond
	// referencePoll is the poll interval of the relay of the table without the trigger:
	// the longest pause between a streaming relay's polls.
	referencePoll = 2 * time.Millisecond
)

// wakeupSide is one outbox table with its relay and a listener counting the writers'
// notifications.
type wakeupSide struct {
	label    string
	table    pg.Table
	notified *atomic.Int64
}

func benchWakeupRelay(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m, reg := newMetrics()
	brk := e.startBroker(m)
	cons := e.dial("consumer")

	sides := []*wakeupSide{
		{label: "without trigger", table: pg.Table{Name: "plain_outbox"}},
		{label: "with trigger", table: pg.Table{Name: "outbox"}},
	}
	for i, s := range sides {
		if err := outbox.Migrate(ctx, e.db, s.table.String()); err != nil {
			b.Fatalf("migrate %s: %v", s.table, err)
		}
		if i == 0 {
			e.exec(ctx, fmt.Sprintf(`DROP TRIGGER %s ON %s`, s.table.Ident("_wakeup"), s.table))
		}
		s.notified = new(atomic.Int64)
		countWakeups(b, e.dbURL, s.table.Channel(), s.notified)
		cfg := defaultRelayConfig(s.table)
		cfg.ListenDatabaseURL = e.dbURL
		if i == 0 {
			// Without a trigger nothing wakes the relay: it polls, as often as the
			// other streams, so that both relays publish each burst while it is
			// written and the writers share the cores with the same relay work.
			cfg.PollInterval = referencePoll
		}
		rl, err := relay.New(e.sidecarPool(), cfg, relay.WithConnection(brk), relay.WithLogger(e.log), relay.WithRegisterer(reg))
		if err != nil {
			b.Fatalf("relay: %v", err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- rl.Run(runCtx) }()
		b.Cleanup(func() { stop(); <-done })
	}
	queue := e.queue(cons, "bench_wakeup_relay")

	writers, err := sql.Open("postgres", e.dbURL)
	if err != nil {
		b.Fatalf("open writers' pool: %v", err)
	}
	defer writers.Close()
	writers.SetMaxOpenConns(wakeupWriters)
	writers.SetMaxIdleConns(wakeupWriters)
	if err := warm(ctx, writers, wakeupWriters); err != nil {
		b.Fatal(err)
	}

	type result struct {
		txs      int
		elapsed  time.Duration
		notifies int64
	}
	measure := func(s *wakeupSide, run func(*wakeupSide, *outbox.Writer) (int, time.Duration, error)) result {
		w, err := outbox.NewWriter(s.table.String())
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(burstPause) // the relay goes to sleep; late notifications come in
		before := s.notified.Load()
		n, d, err := run(s, w)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the listener takes the last notifications
		return result{txs: n, elapsed: d, notifies: s.notified.Load() - before}
	}
	type load struct {
		label string
		run   func(*wakeupSide, *outbox.Writer) (int, time.Duration, error)
	}
	loads := []load{
		{"relay keeping up, writers offered 500 tx/s", func(_ *wakeupSide, w *outbox.Writer) (int, time.Duration, error) {
			return pacedWrites(ctx, writers, w, queue, 500, relayLoadSeconds*500)
		}},
		{"relay keeping up, writers offered 1,500 tx/s", func(_ *wakeupSide, w *outbox.Writer) (int, time.Duration, error) {
			return pacedWrites(ctx, writers, w, queue, 1500, relayLoadSeconds*1500)
		}},
		{fmt.Sprintf("relay asleep between bursts (%d × %d tx at full speed, %v apart)", bursts, burstTxs, burstPause), func(s *wakeupSide, w *outbox.Writer) (int, time.Duration, error) {
			var total time.Duration
			for range bursts {
				time.Sleep(burstPause)
				// The relay is asleep: its flag is up.
				if err := waitFor(ctx, 10*time.Millisecond, func() (bool, error) {
					var v int
					err := e.db.QueryRowContext(ctx, `SELECT last_value FROM `+s.table.Ident("_wakeup")).Scan(&v)
					return v == 1, err
				}); err != nil {
					return 0, 0, fmt.Errorf("wait for the relay of %s to sleep: %w", s.table, err)
				}
				d, err := burstWrites(ctx, writers, w, queue, wakeupWriters, burstTxs)
				if err != nil {
					return 0, 0, err
				}
				total += d
			}
			return bursts * burstTxs, total, nil
		}},
	}

	r := newReport(fmt.Sprintf("Writers' cost of the wake-up beside a running relay: up to %d writer connections, one outbox row of 256 B per transaction (BenchmarkWriterWakeupRelay)", wakeupWriters),
		"load", "tx/s without trigger", "tx/s with trigger", "ratio", "NOTIFYs per tx", "target")
	for li, l := range loads {
		res := make([]result, len(sides))
		for slice := range relayLoadSlices {
			for k := range sides {
				i := k
				if slice%2 == 1 {
					i = len(sides) - 1 - k
				}
				got := measure(sides[i], l.run)
				res[i].txs += got.txs
				res[i].elapsed += got.elapsed
				res[i].notifies += got.notifies
			}
		}
		tps := func(x result) float64 { return float64(x.txs) / x.elapsed.Seconds() }
		ratio := tps(res[1]) / tps(res[0])
		r.row(l.label, rate(tps(res[0])), rate(tps(res[1])), fmt.Sprintf("%.2f", ratio),
			fmt.Sprintf("%.3f (%d of %s)", float64(res[1].notifies)/float64(res[1].txs), res[1].notifies, group(int64(res[1].txs))), "≥ 0.90")
		b.ReportMetric(ratio, fmt.Sprintf("ratio-load%d", li+1))
	}
	r.note("Two outbox tables, each with its own relay (default settings, LISTEN connection, the sidecar's pool) publishing to one queue: `outbox` with the wake-up trigger, `plain_outbox` without it, whose relay polls every %v, so that it publishes rows as promptly as the other: at the default poll interval (1 s) it would publish a burst after it, leaving the cores to the writers during it.", referencePoll)
	r.note("Paced loads: transactions scheduled at the offered rate for %d s and taken by %d writer connections; tx/s = transactions over the time from the first schedule to the last commit. Bursts: %d writers at full speed; tx/s over the bursts' time.", relayLoadSeconds, wakeupWriters, wakeupWriters)
	r.note("%d slices per load and table, in the order without, with | with, without; %v of quiet before each slice, so the relay starts asleep. The relay busy (flag down) and asleep (flag up) extremes without a relay are in BenchmarkWriterWakeup.", relayLoadSlices, burstPause)
	e.noteLoad(r)
	return r
}

// pacedWrites schedules n transactions of one row each at rate per second, taken by
// the pool's writers, and returns n and the time until the last commit.
func pacedWrites(ctx context.Context, db *sql.DB, w *outbox.Writer, key string, rate, n int) (int, time.Duration, error) {
	jobs := make(chan int, n)
	errs := make([]error, wakeupWriters)
	var wg sync.WaitGroup
	body := payload(0)
	for g := range wakeupWriters {
		wg.Go(func() {
			for range jobs {
				if errs[g] == nil {
					errs[g] = writeKeyed(ctx, db, w, key, body)
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
	return n, time.Since(start), errors.Join(errs...)
}

// burstWrites runs n transactions from `writers` goroutines at full speed.
func burstWrites(ctx context.Context, db *sql.DB, w *outbox.Writer, key string, writers, n int) (time.Duration, error) {
	var next atomic.Int64
	errs := make([]error, writers)
	var wg sync.WaitGroup
	body := payload(0)
	start := time.Now()
	for g := range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && errs[g] == nil {
				errs[g] = writeKeyed(ctx, db, w, key, body)
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

func writeKeyed(ctx context.Context, db *sql.DB, w *outbox.Writer, key string, body []byte) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if _, err := w.Write(ctx, tx, outbox.Message{RoutingKey: key, Payload: body}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// countWakeups LISTENs on channel and counts the writers' notifications (empty
// payload; the relay's probes carry one) until the benchmark's cleanup.
func countWakeups(tb testing.TB, dsn, channel string, count *atomic.Int64) {
	tb.Helper()
	l := pq.NewListener(dsn, 100*time.Millisecond, time.Second, nil)
	if err := l.Listen(channel); err != nil {
		_ = l.Close()
		tb.Fatalf("listen %s: %v", channel, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := range l.Notify {
			if n != nil && n.Extra == "" {
				count.Add(1)
			}
		}
	}()
	tb.Cleanup(func() {
		_ = l.Close()
		<-done
	})
}
