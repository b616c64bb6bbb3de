package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// Sizes of the backlog benchmarks; each can be overridden for a quicker run:
// SIDEBOX_BENCH_BACKLOGS (comma-separated row counts), SIDEBOX_BENCH_OUTAGE (a Go
// duration), SIDEBOX_BENCH_LARGE_ROWS (rows of 1 MiB).
const (
	defaultBacklogs  = "10000,1000000,5000000"
	defaultOutage    = 5 * time.Minute
	defaultLargeRows = 2000
	writerRate       = 1000 // rows per second committed by the catch-up benchmark's writer
)

func backlogSizes() []int {
	var out []int
	for _, f := range strings.Split(envOr("SIDEBOX_BENCH_BACKLOGS", defaultBacklogs), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// backlogRun is one drain of a pre-filled backlog.
type backlogRun struct {
	rows     int
	rate     float64
	claims   []time.Duration // per claim, in order
	fill     time.Duration
	duration time.Duration
	cpu      cpuUse // from the relay's start until every row was published
}

// benchBacklog drains backlogs of each size with a relay of default configuration, a
// consumer attached, and reports the rate and the claim times over the drain.
func benchBacklog(tb *testing.B) *report {
	e := newEnv(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	m, reg := newMetrics()
	brk := e.startBroker(m)
	cons := e.dial("consumer")

	var runs []backlogRun
	for _, n := range backlogSizes() {
		table := pg.Table{Name: fmt.Sprintf("backlog_%d", n)}
		if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
			tb.Fatalf("migrate %s: %v", table, err)
		}
		queue := e.queue(cons, "bench_backlog")
		run, err := drainBacklog(ctx, e, table, queue, cons, brk, m, reg, n)
		if err != nil {
			tb.Fatal(err)
		}
		runs = append(runs, run)
		e.deleteQueue(queue)
		e.exec(ctx, `DROP TABLE `+table.String()+` CASCADE`)
		e.exec(ctx, `DROP FUNCTION IF EXISTS `+table.Ident("_wakeup")+`() CASCADE`)
		e.exec(ctx, `DROP SEQUENCE IF EXISTS `+table.Ident("_wakeup"))
	}

	r := newReport("Relay drain by backlog: 256 B rows, consumer attached, defaults (BenchmarkRelayBacklog)",
		"backlog rows", "msgs/s", "vs smallest", "claim p50", "claim p99", "p99/p50", "claim p50: start / middle / end")
	base := runs[0].rate
	for _, run := range runs {
		p50, p99 := quantile(run.claims, 0.5), quantile(run.claims, 0.99)
		third := len(run.claims) / 3
		parts := []string{"-", "-", "-"}
		if third > 0 {
			for i, part := range [][]time.Duration{run.claims[:third], run.claims[third : 2*third], run.claims[2*third:]} {
				parts[i] = fmtMS(quantile(part, 0.5))
			}
		}
		r.row(fmt.Sprintf("%d", run.rows), rate(run.rate), fmt.Sprintf("%.2f", run.rate/base),
			fmtMS(p50), fmtMS(p99), fmt.Sprintf("%.1f", float64(p99)/float64(max(p50, 1))), strings.Join(parts, " / "))
		tb.ReportMetric(run.rate, fmt.Sprintf("msgs/s-%d", run.rows))
		r.plot(series{Plot: "backlog", Label: "sidebox relay (defaults)", X: []float64{float64(run.rows)}, Y: []float64{run.rate}})
		if run.rows != runs[0].rows {
			ratio := run.rate / base
			r.goal(fmt.Sprintf("drain at %s rows ÷ at %s", group(int64(run.rows)), group(int64(runs[0].rows))),
				fmt.Sprintf("%.2f (%s vs %s msgs/s)", ratio, rate(run.rate), rate(base)), "≥ 0.90", ratio >= 0.9)
		}
	}
	if last := runs[len(runs)-1]; len(last.claims) > 0 {
		p50, p99 := quantile(last.claims, 0.5), quantile(last.claims, 0.99)
		ratio := float64(p99) / float64(max(p50, 1))
		r.goal(fmt.Sprintf("claim p99 ÷ p50 over the %s-row drain", group(int64(last.rows))),
			fmt.Sprintf("%.1f (p50 %s, p99 %s)", ratio, fmtMS(p50), fmtMS(p99)), "≤ 2", ratio <= 2)
	}
	r.note("Targets: the rate at 1,000,000 and 5,000,000 rows ≥ 0.9 × the rate at 10,000 (same run); claim p99 over the largest drain ≤ 2 × its p50.")
	r.note("Each backlog is a fresh table filled by one INSERT … SELECT generate_series and VACUUM ANALYZEd; the relay runs from Run until the broker confirmed every row (the published counter).")
	for _, run := range runs {
		r.note("CPU time per message, %s rows, from the relay's start until all were published (/proc): %s.", group(int64(run.rows)), run.cpu)
	}
	r.note("Claim time: from sending the claim until its rows were read, measured in a database/sql driver wrapper on the relay's pool; start / middle / end are the thirds of the drain's claims.")
	r.note("Autovacuum is whatever the server has (off on the shared test server): the drains run without it.")
	e.noteLoad(r)
	return r
}

// drainBacklog fills table with n rows and drains it.
func drainBacklog(ctx context.Context, e *env, table pg.Table, queue string, cons *amqp.Connection,
	brk *broker.Broker, m *metrics.Metrics, reg *prometheus.Registry, n int) (backlogRun, error) {
	run := backlogRun{rows: n}
	tbl := table.String()
	start := time.Now()
	for done := 0; done < n; done += 1_000_000 {
		k := min(n-done, 1_000_000)
		if _, err := e.db.ExecContext(ctx, `INSERT INTO `+tbl+` (exchange, routing_key, payload)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), $3 / 8), 'UTF8') FROM generate_series($4::int, $4::int + $2 - 1) AS i`,
			queue, k, payloadSize, done); err != nil {
			return run, fmt.Errorf("fill %s: %w", tbl, err)
		}
	}
	if _, err := e.db.ExecContext(ctx, `VACUUM ANALYZE `+tbl); err != nil {
		return run, fmt.Errorf("vacuum %s: %w", tbl, err)
	}
	run.fill = time.Since(start)

	counted, stopCount, err := countDeliveries(cons, queue)
	if err != nil {
		return run, err
	}
	defer stopCount()
	pool, counter := e.countingPool()
	var mu sync.Mutex
	counter.timed = func(q string, _ time.Time, took time.Duration) {
		if strings.Contains(q, "WITH RECURSIVE walk") {
			mu.Lock()
			run.claims = append(run.claims, took)
			mu.Unlock()
		}
	}
	published := m.Published.WithLabelValues(tbl)
	before := counterValue(published)
	rl, err := relay.New(pool, relay.Config{Table: table.String(), ListenDatabaseURL: e.dbURL}, relay.WithConnection(brk), relay.WithLogger(e.log), relay.WithRegisterer(reg))
	if err != nil {
		return run, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	exited := make(chan error, 1)
	start = time.Now()
	run.cpu.measure(func() int {
		go func() { exited <- rl.Run(runCtx) }()
		err = waitFor(ctx, 20*time.Millisecond, func() (bool, error) {
			return counterValue(published)-before >= float64(n), nil
		})
		run.duration = time.Since(start)
		return n
	})
	stop()
	if rerr := <-exited; err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return run, fmt.Errorf("drain %d rows: %w", n, err)
	}
	run.rate = float64(n) / run.duration.Seconds()
	_ = waitFor(ctx, 10*time.Millisecond, func() (bool, error) { return counted.Load() >= int64(n), nil })
	mu.Lock()
	defer mu.Unlock()
	return run, nil
}

// countDeliveries consumes queue with auto-ack and counts deliveries, keeping nothing.
func countDeliveries(conn *amqp.Connection, queue string) (*atomic.Int64, func(), error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, nil, fmt.Errorf("consume %s: %w", queue, err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range deliveries {
			n.Add(1)
		}
	}()
	return &n, func() { _ = ch.Close(); <-done }, nil
}

// benchCatchUp stops the relay while a writer commits writerRate rows per second for
// the outage, then starts it with the writer still writing, and measures how long the
// relay takes to publish every row committed before it started.
func benchCatchUp(tb *testing.B) *report {
	e := newEnv(tb)
	outage := defaultOutage
	if v := os.Getenv("SIDEBOX_BENCH_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			tb.Fatalf("SIDEBOX_BENCH_OUTAGE: %v", err)
		}
		outage = d
	}
	if outage == 0 {
		tb.Skip("SIDEBOX_BENCH_OUTAGE=0: no catch-up run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), outage+10*time.Minute)
	defer cancel()
	m, reg := newMetrics()
	brk := e.startBroker(m)
	cons := e.dial("consumer")
	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	queue := e.queue(cons, "bench_catchup")
	counted, stopCount, err := countDeliveries(cons, queue)
	if err != nil {
		tb.Fatal(err)
	}
	defer stopCount()

	// The writer: every 10 ms, one transaction with the rows due by then.
	wctx, stopWriter := context.WithCancel(ctx)
	var written atomic.Int64
	var werr error
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		begin := time.Now()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			due := int64(time.Since(begin).Seconds()*writerRate) - written.Load()
			if due <= 0 {
				continue
			}
			if _, err := e.db.ExecContext(wctx, `INSERT INTO outbox (exchange, routing_key, payload)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), $3 / 8), 'UTF8') FROM generate_series(1, $2) AS i`,
				queue, due, payloadSize); err != nil {
				if wctx.Err() == nil {
					werr = err
				}
				return
			}
			written.Add(due)
		}
	}()

	select {
	case <-time.After(outage):
	case <-writerDone:
		tb.Fatalf("writer stopped: %v", werr)
	}
	backlog := written.Load()
	// The outage's inserts are what autovacuum analyses (its threshold is 50 rows
	// plus 10 % of the table); the shared test server runs without autovacuum, and
	// without statistics the planner takes the backlog for a few rows (see
	// docs/DESIGN.md, "Cost at any backlog"). Analyse as autovacuum would have.
	if _, err := e.db.ExecContext(ctx, `ANALYZE outbox`); err != nil {
		tb.Fatalf("analyze: %v", err)
	}
	var startedAt time.Time
	if err := e.db.QueryRowContext(ctx, `SELECT clock_timestamp()`).Scan(&startedAt); err != nil {
		tb.Fatal(err)
	}
	rl, err := relay.New(e.sidecarPool(), relay.Config{Table: table.String(), ListenDatabaseURL: e.dbURL}, relay.WithConnection(brk), relay.WithLogger(e.log), relay.WithRegisterer(reg))
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	exited := make(chan error, 1)
	start := time.Now()
	writtenAtStart := written.Load()
	var cpu cpuUse
	var took time.Duration
	var writtenDuring int64
	cpu.measure(func() int {
		go func() { exited <- rl.Run(runCtx) }()
		// Caught up: no row remains that was committed before the relay started.
		// The probe matches outbox_unkeyed_idx's predicate: one index probe, not a
		// scan of the table every 50 ms beside the relay.
		err = waitFor(ctx, 50*time.Millisecond, func() (bool, error) {
			var left bool
			err := e.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM outbox
			WHERE ordering_key IS NULL AND dead_at IS NULL AND published_at IS NULL AND available_at <= $1)`, startedAt).Scan(&left)
			return !left, err
		})
		took = time.Since(start)
		writtenDuring = written.Load() - writtenAtStart
		return int(backlog + writtenDuring)
	})
	writerAlive := true
	select {
	case <-writerDone:
		writerAlive = false
	default:
	}
	// Let the relay keep up with the writer for a moment, then stop both.
	time.Sleep(2 * time.Second)
	stopWriter()
	<-writerDone
	stop()
	if rerr := <-exited; err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	published := counterValue(m.Published.WithLabelValues("outbox"))

	// The machine's ceiling: raw amqp091-go publishing the same messages to a queue of
	// their own, best of two runs, with the writer stopped. No relay drains faster than
	// the client it publishes with, so backlog ÷ (ceiling - writer rate) bounds the
	// catch-up from below on this machine.
	raw := &drainer{e: e, queue: e.queue(cons, "bench_catchup_raw"), pub: e.dial("publisher"), cons: cons}
	var ceiling float64
	for range 2 {
		v, err := raw.raw(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		ceiling = max(ceiling, v)
	}
	floor := time.Duration(float64(backlog) / (ceiling - writerRate) * float64(time.Second))

	r := newReport("Catch-up after an outage: the relay stopped while a writer commits 1,000 msg/s, then started (BenchmarkRelayCatchUp)",
		"outage", "backlog at start", "caught up in", "fraction of the outage", "target", "net drain rate", "writer during catch-up")
	alive := "kept writing"
	if !writerAlive {
		alive = "stopped: " + fmt.Sprint(werr)
	}
	r.row(outage.String(), fmt.Sprintf("%d", backlog), took.Round(10*time.Millisecond).String(),
		fmt.Sprintf("1/%.0f", outage.Seconds()/took.Seconds()), "≤ 1/20",
		rate(float64(backlog)/took.Seconds()), fmt.Sprintf("%s (%d rows, %s)", alive, writtenDuring, rate(float64(writtenDuring)/took.Seconds())))
	r.row("ceiling: raw amqp091-go", "", floor.Round(10*time.Millisecond).String(), fmt.Sprintf("1/%.0f", outage.Seconds()/floor.Seconds()), "",
		rate(ceiling-writerRate), "")
	r.note("The ceiling row is the backlog divided by the net rate raw amqp091-go reached on this machine in the same run: pipelined confirms (window %d), %s messages of 256 B to a queue of their own with a consumer attached, best of two runs, after the catch-up with the writer stopped, minus the writer's 1,000 msg/s. No relay publishing with that client catches up faster here.", rawWindow, rate(drainRows))
	r.note("Caught up: no row committed before the relay's start is left in the outbox (polled every 50 ms). 256 B rows, default configuration, a consumer attached (%d deliveries counted, %v published).", counted.Load(), published)
	r.note("CPU time per message published during the catch-up (the backlog and the writer's rows meanwhile; the writer's own work included), from /proc: %s.", cpu)
	r.note("The writer commits every 10 ms the rows due at 1,000 per second, on the application's pool. The outbox is ANALYZEd when the relay starts, as autovacuum would have analysed it during the outage (the shared test server runs without autovacuum; without statistics the claim's plan sorts the whole backlog: 1/1 of the outage in an earlier run).")
	e.noteLoad(r)
	frac := took.Seconds() / outage.Seconds()
	r.goal(fmt.Sprintf("catch-up after a %s outage at 1,000 msg/s, writer running", outage), fmt.Sprintf("%s (1/%.0f of the outage; raw amqp091-go's ceiling here: 1/%.0f)", took.Round(10*time.Millisecond), 1/frac, outage.Seconds()/floor.Seconds()),
		"≤ 1/20", frac <= 1.0/20 && writerAlive)
	tb.ReportMetric(took.Seconds(), "catchup-s")
	tb.ReportMetric(floor.Seconds(), "ceiling-s")
	return r
}

// benchMemory runs `sidebox relay` as its own process draining rows of 1 MiB and reads
// its peak resident memory, with the byte budget at its default and, for comparison,
// as good as off (1 GiB: the batch is then bounded by its 500 rows only, as before
// SIDEBOX_BATCH_BYTES).
func benchMemory(tb *testing.B) *report {
	e := newEnv(tb)
	rows := defaultLargeRows
	if v := os.Getenv("SIDEBOX_BENCH_LARGE_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			tb.Fatalf("SIDEBOX_BENCH_LARGE_ROWS: want a positive integer, got %q", v)
		}
		rows = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin := filepath.Join(tb.TempDir(), "sidebox")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/sidebox/sidebox/cmd/sidebox").CombinedOutput(); err != nil {
		tb.Fatalf("build sidebox: %v\n%s", err, out)
	}
	cons := e.dial("consumer")
	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	r := newReport(fmt.Sprintf("Relay memory: `sidebox relay` draining %d rows of 1 MiB (BenchmarkRelayMemory)", rows),
		"SIDEBOX_BATCH_BYTES", "peak RSS", "drain time", "target")
	for _, budget := range []string{"1073741824", ""} {
		queue := e.queue(cons, "bench_memory")
		counted, stopCount, err := countDeliveries(cons, queue)
		if err != nil {
			tb.Fatal(err)
		}
		// Compressible payloads: PostgreSQL stores them small; the relay gets 1 MiB each.
		e.exec(ctx, `INSERT INTO outbox (exchange, routing_key, payload)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), 131072), 'UTF8') FROM generate_series(1, $2) AS i`, queue, rows)
		e.exec(ctx, `VACUUM ANALYZE outbox`)
		cmd := exec.CommandContext(ctx, bin, "relay")
		cmd.Env = append(os.Environ(), "SIDEBOX_DATABASE_URL="+e.dbURL, "SIDEBOX_AMQP_URL="+e.amqpURL,
			"SIDEBOX_HTTP_ADDR=127.0.0.1:0", "SIDEBOX_LOG_LEVEL=warn")
		if budget != "" {
			cmd.Env = append(cmd.Env, "SIDEBOX_BATCH_BYTES="+budget)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		err = waitFor(ctx, 20*time.Millisecond, func() (bool, error) {
			if cmd.ProcessState != nil {
				return false, fmt.Errorf("sidebox relay exited: %s", stderr.String())
			}
			return counted.Load() >= int64(rows), nil
		})
		took := time.Since(start)
		peak := peakRSS(cmd.Process.Pid)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		stopCount()
		e.deleteQueue(queue)
		if err != nil {
			tb.Fatal(err)
		}
		name := budget
		if name == "" {
			name = fmt.Sprintf("%d (default)", relay.DefaultBatchBytes)
		}
		r.row(name, fmt.Sprintf("%.0f MiB", float64(peak)/(1<<20)), took.Round(10*time.Millisecond).String(), "≤ 256 MiB (half the chart's limit)")
		tb.ReportMetric(float64(peak)/(1<<20), "peak-MiB-"+strings.Fields(name)[0])
		e.exec(ctx, `DELETE FROM outbox`)
	}
	r.note("Peak RSS is the process's VmHWM (/proc/<pid>/status) after the consumer counted every message. Default configuration otherwise: batch 500, 2 workers.")
	r.note("With the budget off, a batch holds 500 rows of 1 MiB; with the default each holds 8 MiB, and two are in flight.")
	e.noteLoad(r)
	return r
}

// peakRSS returns the peak resident set of process pid, in bytes; 0 when unknown.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// quantile returns the p-quantile of unsorted durations.
func quantile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentile(s, p)
}
