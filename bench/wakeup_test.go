package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
)

const (
	wakeupWriters = 16   // concurrent writer goroutines, one connection each
	wakeupTxs     = 1000 // transactions per variant and slice, one outbox row each
	wakeupSlices  = 6    // slices; in each, every variant runs once, in alternating order
)

// wakeupVariant is one way of waking a relay, applied to its own outbox table.
type wakeupVariant struct {
	label  string
	metric string // suffix of the reported tx/s metric
	table  pg.Table
	setup  []string // statements run after the migrations, %[1]s = table, %[2]s = flag sequence, %[3]s = channel
	slice  []string // statements run before each of its slices, as setup
	listen bool     // a sleeping relay LISTENs on the channel
}

func wakeupVariants() []wakeupVariant {
	return []wakeupVariant{
		{
			label:  "(a) no wake-up trigger",
			metric: "no-trigger",
			table:  pg.Table{Name: "plain_outbox"},
			setup:  []string{`DROP TRIGGER %[2]s ON %[1]s`},
		},
		{
			label:  "(b) sidebox trigger, relay busy (flag 0)",
			metric: "flag0",
			table:  pg.Table{Name: "busy_outbox"},
			setup:  []string{`SELECT setval('%[2]s', 0)`},
		},
		{
			label:  "(c) sidebox trigger, relay asleep (flag 1; the first writer takes it)",
			metric: "flag1",
			table:  pg.Table{Name: "asleep_outbox"},
			slice:  []string{`SELECT setval('%[2]s', 1)`},
			listen: true,
		},
		{
			label:  "(d) naive trigger: NOTIFY on every insert",
			metric: "naive",
			table:  pg.Table{Name: "naive_outbox"},
			setup: []string{
				`DROP TRIGGER %[2]s ON %[1]s`,
				`CREATE FUNCTION %[1]s_naive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('%[3]s', NEW.id::text);
    RETURN NULL;
END $$`,
				`CREATE TRIGGER %[1]s_naive AFTER INSERT ON %[1]s FOR EACH ROW EXECUTE FUNCTION %[1]s_naive()`,
			},
			listen: true,
		},
	}
}

// benchWakeup measures writer throughput (one outbox row per transaction, wakeupWriters
// concurrent writers) for each wake-up variant, interleaved over wakeupRounds rounds.
func benchWakeup(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	variants := wakeupVariants()
	notified := make([]*atomic.Int64, len(variants))
	for i, v := range variants {
		if err := outbox.Migrate(ctx, e.db, v.table.String()); err != nil {
			b.Fatalf("migrate %s: %v", v.table, err)
		}
		for _, s := range v.setup {
			e.exec(ctx, fmt.Sprintf(s, v.table, v.table.Ident("_wakeup"), v.table.Channel()))
		}
		notified[i] = new(atomic.Int64)
		if v.listen {
			listenUntilCleanup(b, e.dbURL, v.table.Channel(), notified[i])
		}
	}

	writers, err := sql.Open("postgres", e.dbURL)
	if err != nil {
		b.Fatalf("open writers' pool: %v", err)
	}
	defer writers.Close()
	writers.SetMaxOpenConns(wakeupWriters)
	writers.SetMaxIdleConns(wakeupWriters)
	// Warm-up: open every connection and run the insert path once per variant.
	for _, v := range variants {
		if _, err := writeConcurrently(ctx, writers, v.table, wakeupWriters, wakeupWriters*20); err != nil {
			b.Fatal(err)
		}
	}

	// The variants take turns in short slices, so that a burst of other work on the
	// machine hits them all alike; each one's rate is its transactions over its time.
	elapsed := make([]time.Duration, len(variants))
	perSlice := make([][]float64, len(variants))
	notifiedBefore := make([]int64, len(variants))
	for i := range variants {
		notifiedBefore[i] = notified[i].Load()
	}
	for slice := range wakeupSlices {
		for k := range variants {
			i := k
			if slice%2 == 1 {
				i = len(variants) - 1 - k
			}
			v := variants[i]
			for _, s := range v.slice {
				e.exec(ctx, fmt.Sprintf(s, v.table, v.table.Ident("_wakeup"), v.table.Channel()))
			}
			d, err := writeConcurrently(ctx, writers, v.table, wakeupWriters, wakeupTxs)
			if err != nil {
				b.Fatal(err)
			}
			elapsed[i] += d
			perSlice[i] = append(perSlice[i], float64(wakeupTxs)/d.Seconds())
		}
	}
	time.Sleep(200 * time.Millisecond) // let the listeners take the last notifications

	r := newReport(fmt.Sprintf("Writers' cost of the wake-up: %d writers, one outbox row of 256 B per transaction (BenchmarkWriterWakeup)", wakeupWriters),
		"variant", "tx/s", "vs (a)", "slowest–fastest slice", "NOTIFYs per tx")
	total := float64(wakeupTxs * wakeupSlices)
	base := total / elapsed[0].Seconds()
	for i, v := range variants {
		tps := total / elapsed[i].Seconds()
		perTx := float64(notified[i].Load()-notifiedBefore[i]) / total
		r.row(v.label, rate(tps), fmt.Sprintf("%.2f", tps/base), rate(slices.Min(perSlice[i]))+"–"+rate(slices.Max(perSlice[i])), fmt.Sprintf("%.2f", perTx))
		b.ReportMetric(tps, "tx/s-"+v.metric)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer ccancel()
	if cpu, err := backendCPU(cctx, e.dbURL, []pg.Table{variants[0].table, variants[1].table}); err != nil {
		r.note("Writer backend CPU per transaction: not measured (%v).", err)
	} else {
		r.note("Writer backend CPU per transaction, one connection, %d rounds of %s tx interleaved (the server's /proc/<pid>/schedstat; steadier than tx/s on a busy machine): (a) %.0f µs, (b) %.0f µs (%+.0f %%).",
			cpuRounds, group(cpuTxs), cpu[0], cpu[1], 100*(cpu[1]/cpu[0]-1))
		b.ReportMetric(cpu[1]/cpu[0], "cpu-ratio-flag0")
	}
	r.note("Each tx: BEGIN; outbox.Writer.Write (one INSERT); COMMIT, through lib/pq, each writer on its own connection; synchronous_commit=on.")
	r.note("%d slices of %s tx per variant, the variants in the order a,b,c,d | d,c,b,a | …; tx/s = all of a variant's transactions over all of its time.", wakeupSlices, group(wakeupTxs))
	r.note("(c) and (d) have a listener connection (the sleeping relay) draining the notifications. (c) raises the flag before each of its slices, as a relay that slept, and leaves it as the writers leave it, as if the relay never woke: the first writer to commit takes it and notifies, the others do not (migration 0006). Before 0006 every writer notified while the flag was up, which cost 0.30 of (a)'s rate (issue 11).")
	e.noteLoad(r)
	return r
}

// writeConcurrently runs n transactions of one outbox row each from `writers` goroutines
// and returns the wall time.
func writeConcurrently(ctx context.Context, db *sql.DB, table pg.Table, writers, n int) (time.Duration, error) {
	w, err := outbox.NewWriter(table.String())
	if err != nil {
		return 0, fmt.Errorf("outbox writer: %w", err)
	}
	body := payload(0)
	var next atomic.Int64
	errs := make([]error, writers)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := writeOne(ctx, db, w, body); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return elapsed, nil
}

func writeOne(ctx context.Context, db *sql.DB, w *outbox.Writer, body []byte) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if _, err := w.Write(ctx, tx, outbox.Message{RoutingKey: "bench", Payload: body}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// listenUntilCleanup LISTENs on channel on a connection of its own, as a sleeping relay
// does, and counts the notifications until the benchmark's cleanup.
func listenUntilCleanup(tb testing.TB, dsn, channel string, count *atomic.Int64) {
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
			if n != nil {
				count.Add(1)
			}
		}
	}()
	tb.Cleanup(func() {
		_ = l.Close()
		<-done
	})
}

const (
	cpuRounds = 6
	cpuTxs    = 1000
)

// backendCPU returns the CPU time, in µs per transaction, that the server process of
// one writer connection spends on a transaction of one outbox row, for each table,
// measured in interleaved rounds. It needs the server on this machine.
func backendCPU(ctx context.Context, dsn string, tables []pg.Table) ([]float64, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var pid int
	if err := db.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		return nil, err
	}
	onCPU := func() (int64, error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, errors.New("empty schedstat")
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	if _, err := onCPU(); err != nil {
		return nil, fmt.Errorf("the server's process is not on this machine: %w", err)
	}
	total := make([]int64, len(tables))
	body := payload(0)
	for round := range cpuRounds {
		for k := range tables {
			i := k
			if round%2 == 1 {
				i = len(tables) - 1 - k
			}
			w, err := outbox.NewWriter(tables[i].String())
			if err != nil {
				return nil, err
			}
			before, err := onCPU()
			if err != nil {
				return nil, err
			}
			for range cpuTxs {
				if err := writeOne(ctx, db, w, body); err != nil {
					return nil, err
				}
			}
			after, err := onCPU()
			if err != nil {
				return nil, err
			}
			total[i] += after - before
		}
	}
	out := make([]float64, len(tables))
	for i, t := range total {
		out[i] = float64(t) / 1e3 / float64(cpuRounds*cpuTxs)
	}
	return out, nil
}
