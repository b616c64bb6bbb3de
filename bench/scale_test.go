package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

const (
	maxRelays   = 3    // drains with 1, 2 and 3 relays on one table
	fastRate    = 2000 // msg/s of the fast latency load
	fastWriters = 8    // writer connections of the fast load
	rssTarget   = 64   // MiB, the relay's resident memory at full speed
)

// benchScale measures the relay at scale, interleaved in rounds: the drain with 1, 2 and
// 3 relays on one table; `sidebox relay` as a process of its own draining usageRows()
// rows at full speed (peak RSS, CPU seconds per 100,000 messages); and commit-to-delivery
// latency at 2,000 msg/s.
func benchScale(b *testing.B) *report {
	e := newEnv(b)
	rounds := benchRounds()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// Built before any connection is opened: a slow build must not starve heartbeats.
	bin, err := testenv.BuildSidebox(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate outbox: %v", err)
	}
	m, reg := newMetrics()
	conns := make([]relayConn, maxRelays)
	for i := range conns {
		conns[i] = relayConn{db: e.sidecarPool(), brk: e.startBroker(m)}
	}
	pub := e.dial("publisher")
	cons := e.dial("consumer")
	queue := e.queue(pub, "bench_scale")
	d := &drainer{e: e, table: table, queue: queue, pub: pub, cons: cons, relayDB: conns[0].db, brk: conns[0].brk, reg: reg, rows: peerRows()}

	drains := make([][]float64, maxRelays+1) // by relay count
	var usages []processRun
	var lats []latencyRun
	for round := range rounds {
		for i := range maxRelays {
			k := i + 1
			if round%2 == 1 {
				k = maxRelays - i
			}
			v, err := d.relays(ctx, defaultRelayConfig(table), conns[:k])
			if err != nil {
				b.Fatalf("drain with %d relays: %v", k, err)
			}
			drains[k] = append(drains[k], v)
		}
		u, err := relayProcess(ctx, e, bin, cons, usageRows())
		if err != nil {
			b.Fatal(err)
		}
		usages = append(usages, u)
		run, err := fastLatency(ctx, e, d, conns[0])
		if err != nil {
			b.Fatal(err)
		}
		lats = append(lats, run)
	}

	r := newReport("Scale: relays on one table, the relay process's memory and CPU, latency at 2,000 msg/s (BenchmarkRelayScale)",
		"measure", "best / median (spread)", "all runs", "target")
	for k := 1; k <= maxRelays; k++ {
		r.row(fmt.Sprintf("drain %s rows, %d relay(s), msgs/s", group(int64(d.n())), k), bestMedian(drains[k]), rates(drains[k]), "")
		r.plot(series{Plot: "scale", Label: "sidebox relays on one table", X: []float64{float64(k)}, Y: drains[k]})
	}
	var rss, cpu, urate []float64
	for _, u := range usages {
		rss = append(rss, float64(u.usage.PeakRSS)/(1<<20))
		cpu = append(cpu, u.usage.CPU.Seconds()*100_000/float64(u.rows))
		urate = append(urate, u.rate)
	}
	n := group(int64(usageRows()))
	r.row(fmt.Sprintf("`sidebox relay` process, %s rows: peak RSS, MiB", n), fmt.Sprintf("%.0f / %.0f (%s)", minOf(rss), median(rss), spread(rss)), floats(rss, "%.0f"), fmt.Sprintf("≤ %d MiB", rssTarget))
	r.row("`sidebox relay` process: CPU seconds per 100,000 messages", fmt.Sprintf("%.2f / %.2f (%s)", minOf(cpu), median(cpu), spread(cpu)), floats(cpu, "%.2f"), "")
	r.row("`sidebox relay` process: drain msgs/s", bestMedian(urate), rates(urate), "")
	r.goal("relay process peak RSS at full speed", fmt.Sprintf("%.0f MiB (median)", median(rss)), fmt.Sprintf("≤ %d MiB", rssTarget), median(rss) <= rssTarget)
	var p50s, p99s, maxs, achieved []float64
	var all []time.Duration
	for _, run := range lats {
		p50s = append(p50s, ms(percentile(run.lat, 0.5)))
		p99s = append(p99s, ms(percentile(run.lat, 0.99)))
		maxs = append(maxs, ms(run.lat[len(run.lat)-1]))
		achieved = append(achieved, run.achieved)
		all = append(all, run.lat...)
	}
	r.row(fmt.Sprintf("commit-to-delivery at %s msg/s: p50, ms", group(fastRate)), fmt.Sprintf("%.2f / %.2f (%s)", minOf(p50s), median(p50s), spread(p50s)), floats(p50s, "%.2f"), "")
	r.row(fmt.Sprintf("commit-to-delivery at %s msg/s: p99, ms", group(fastRate)), fmt.Sprintf("%.2f / %.2f (%s)", minOf(p99s), median(p99s), spread(p99s)), floats(p99s, "%.2f"), "")
	r.row(fmt.Sprintf("commit-to-delivery at %s msg/s: max, ms", group(fastRate)), fmt.Sprintf("%.0f / %.0f", minOf(maxs), median(maxs)), floats(maxs, "%.0f"), "")
	r.row("writer rate achieved, msg/s", bestMedian(achieved), rates(achieved), group(fastRate))
	r.plot(series{Plot: "latency", Group: fmt.Sprintf("%d msg/s", fastRate), Label: "sidebox relay (defaults)", Y: durationsMS(sortedCopy(all))})
	r.note("Best is the highest rate and the lowest memory, CPU time and latency; the spread is half the range over the median. %d rounds; in each the drains run with 1, 2, 3 relays (backwards in odd rounds), then the relay process, then the latency load.", rounds)
	r.note("Relays on one table: each relay has its own pool (opened as the sidecar opens it) and its own broker connection, default configuration, all in the benchmark's process, started together on a pre-filled, VACUUM ANALYZEd table; timed until the consumer has every message and the table is empty.")
	r.note("Relay process: `sidebox relay` built from cmd/sidebox, default configuration, log level warn, on a table pre-filled with %s rows of 256 B; peak RSS (VmHWM) and CPU time (utime + stime, /proc/<pid>/stat, 10 ms resolution) read once the consumer counted every message, start-up included (testenv.ProcessUsage).", n)
	r.note("Latency: %d s at %s msg/s, one message per transaction (outbox.Writer), %d writer connections; measured as in BenchmarkRelayLatency.", fastLoadSeconds(), group(fastRate), fastWriters)
	e.noteLoad(r)
	b.ReportMetric(median(rss), "rss-MiB")
	b.ReportMetric(median(cpu), "cpu-s/100k")
	return r
}

func floats(vs []float64, format string) string {
	s := ""
	for i, v := range vs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf(format, v)
	}
	return s
}

// processRun is one drain by `sidebox relay` as a process of its own.
type processRun struct {
	rows  int
	rate  float64
	usage testenv.Usage
}

// relayProcess fills the outbox with n rows for a queue of its own, runs `sidebox
// relay` until a consumer has counted them all, and reads the process's usage.
func relayProcess(ctx context.Context, e *env, bin string, cons *amqp.Connection, n int) (processRun, error) {
	run := processRun{rows: n}
	queue := e.queue(cons, "bench_process")
	if _, err := e.db.ExecContext(ctx, `INSERT INTO outbox (exchange, routing_key, payload)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), $3 / 8), 'UTF8') FROM generate_series(0, $2 - 1) AS i`,
		queue, n, payloadSize); err != nil {
		return run, fmt.Errorf("fill outbox: %w", err)
	}
	if _, err := e.db.ExecContext(ctx, `VACUUM ANALYZE outbox`); err != nil {
		return run, fmt.Errorf("vacuum outbox: %w", err)
	}
	counted, stopCount, err := countDeliveries(cons, queue)
	if err != nil {
		return run, err
	}
	defer stopCount()
	start := time.Now()
	sb := testenv.StartSidebox(e.tb, bin, "relay", []string{"SIDEBOX_DATABASE_URL=" + e.dbURL, "SIDEBOX_AMQP_URL=" + e.amqpURL,
		"SIDEBOX_LOG_LEVEL=warn"})
	err = waitFor(ctx, 5*time.Millisecond, func() (bool, error) {
		if done, err := sb.Exited(); done {
			return false, fmt.Errorf("sidebox relay exited: %v\n%s", err, sb.LogTail())
		}
		return counted.Load() >= int64(n), nil
	})
	took := time.Since(start)
	if err == nil {
		run.usage, err = sb.Usage()
	}
	if serr := sb.Stop(30 * time.Second); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return run, err
	}
	run.rate = float64(n) / took.Seconds()
	return run, nil
}

// fastLatency runs a relay with the default configuration on c and measures
// commit-to-delivery latency at fastRate.
func fastLatency(ctx context.Context, e *env, d *drainer, c relayConn) (latencyRun, error) {
	var run latencyRun
	cfg := defaultRelayConfig(d.table)
	cfg.ListenDatabaseURL = e.dbURL
	rl, err := relay.New(c.db, cfg, relay.WithConnection(c.brk), relay.WithLogger(e.log), relay.WithRegisterer(d.reg))
	if err != nil {
		return run, fmt.Errorf("relay: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rl.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	time.Sleep(time.Second)
	lat, achieved, err := steadyLoadAt(ctx, e, d.cons, d.queue, d.table, fastRate, fastRate*fastLoadSeconds(), fastWriters)
	if err != nil {
		return run, err
	}
	run.lat, run.achieved = sortedCopy(lat), achieved
	return run, nil
}

// steadyLoadAt is steadyLoad (latency_test.go) at any rate, count and writer count:
// msgs outbox rows at rate, one per transaction, taken by writers connections; it
// returns each message's commit-to-delivery latency and the achieved write rate.
func steadyLoadAt(ctx context.Context, e *env, cons *amqp.Connection, queue string, table pg.Table, rate, msgs, writers int) ([]time.Duration, float64, error) {
	ids := make([]uuid.UUID, msgs)
	names := make([]string, msgs)
	for i := range ids {
		ids[i] = uuid.New()
		names[i] = ids[i].String()
	}
	s, err := newSink(cons, queue, msgs, names)
	if err != nil {
		return nil, 0, err
	}
	w, err := outbox.NewWriter(table.String())
	if err != nil {
		return nil, 0, fmt.Errorf("outbox writer: %w", err)
	}
	pool, err := sql.Open("postgres", e.dbURL)
	if err != nil {
		return nil, 0, fmt.Errorf("open writers' pool: %w", err)
	}
	defer pool.Close()
	pool.SetMaxOpenConns(writers)
	pool.SetMaxIdleConns(writers)
	if err := warm(ctx, pool, writers); err != nil {
		return nil, 0, err
	}
	commitAt := make([]time.Time, msgs)
	jobs := make(chan int, msgs)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range jobs {
				if errs[g] != nil {
					continue
				}
				errs[g] = func() error {
					tx, err := pool.BeginTx(ctx, nil)
					if err != nil {
						return fmt.Errorf("begin: %w", err)
					}
					if _, err := w.Write(ctx, tx, outbox.Message{ID: ids[i], RoutingKey: queue, Payload: payload(i)}); err != nil {
						_ = tx.Rollback()
						return err
					}
					if err := tx.Commit(); err != nil {
						return fmt.Errorf("commit: %w", err)
					}
					commitAt[i] = time.Now()
					return nil
				}()
			}
		})
	}
	period := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range msgs {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	var last time.Time
	for _, t := range commitAt {
		if t.After(last) {
			last = t
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.wait(wctx); err != nil {
		return nil, 0, err
	}
	lat := make([]time.Duration, msgs)
	for i := range lat {
		lat[i] = s.recvAt[i].Sub(commitAt[i])
	}
	return lat, float64(msgs) / last.Sub(start).Seconds(), nil
}

// BenchmarkRelayScale: drains with 1, 2 and 3 relays on one table, the relay process's
// peak RSS and CPU time per 100,000 messages at full speed, latency at 2,000 msg/s.
func BenchmarkRelayScale(b *testing.B) {
	for range b.N {
		emit(b, benchScale(b))
	}
}
