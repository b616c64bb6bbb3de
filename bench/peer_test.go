package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// The Watermill forwarder, the peer a user would pick instead of sidebox, runs as the
// child process bench/peer (a module of its own, so that Watermill stays out of
// sidebox's dependencies): watermill-sql's queue schema over lib/pq, watermill-amqp with
// one pooled channel and publisher confirms, at its default poll interval and at 10 ms.

const peerTopic = "outbox" // the forwarder's table: watermill_outbox

// peerPolls are the poll intervals the forwarder is measured at: its default and 10 ms.
var peerPolls = []time.Duration{time.Second, 10 * time.Millisecond}

// buildPeer builds bench/peer into a temporary directory and returns the binary.
func buildPeer(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "peer")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "peer"
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build bench/peer: %v\n%s", err, out)
	}
	return bin
}

// peerProc is a running `peer forward`.
type peerProc struct {
	cmd    *exec.Cmd
	lines  chan string // its standard output
	stderr *strings.Builder
}

// startForwarder starts the forwarder with poll and waits until it runs.
func startForwarder(ctx context.Context, bin, dbURL, amqpURL string, poll time.Duration) (*peerProc, error) {
	cmd := exec.Command(bin, "forward", "-db", dbURL, "-amqp", amqpURL, "-topic", peerTopic, "-poll", poll.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &peerProc{cmd: cmd, lines: make(chan string, 16), stderr: &strings.Builder{}}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start peer: %w", err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	if _, err := p.line(ctx, "ready"); err != nil {
		_ = p.stop()
		return nil, err
	}
	return p, nil
}

// line waits for the next output line that starts with prefix.
func (p *peerProc) line(ctx context.Context, prefix string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return "", fmt.Errorf("peer exited before %q: %s", prefix, p.stderr.String())
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-ctx.Done():
			return "", fmt.Errorf("peer: no %q: %w", prefix, ctx.Err())
		}
	}
}

// queries returns the statements the forwarder's database handle ran so far.
func (p *peerProc) queries(ctx context.Context) (int64, error) {
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return 0, fmt.Errorf("peer: %w", err)
	}
	l, err := p.line(ctx, "stats ")
	if err != nil {
		return 0, err
	}
	var q, tx int64
	if _, err := fmt.Sscanf(l, "stats queries=%d tx=%d", &q, &tx); err != nil {
		return 0, fmt.Errorf("peer stats %q: %w", l, err)
	}
	return q, nil
}

// stop ends the forwarder with SIGTERM and waits for it.
func (p *peerProc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() {
		for range p.lines {
		}
		done <- p.cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("peer forward: %w: %s", err, p.stderr.String())
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New("peer forward did not exit within 30s of SIGTERM")
	}
}

// watermill fills the forwarder's table with the run's rows through Watermill's own
// publisher, starts the forwarder with poll and returns msgs/s from its start until all
// are consumed and the table is empty.
func (d *drainer) watermill(ctx context.Context, bin string, poll time.Duration) (float64, error) {
	n := d.n()
	if out, err := exec.CommandContext(ctx, bin, "fill", "-db", d.e.dbURL, "-topic", peerTopic, "-queue", d.queue,
		"-n", strconv.Itoa(n)).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("peer fill: %w: %s", err, out)
	}
	tbl := `"watermill_` + peerTopic + `"`
	if _, err := d.e.db.ExecContext(ctx, `VACUUM ANALYZE `+tbl); err != nil {
		return 0, fmt.Errorf("vacuum %s: %w", tbl, err)
	}
	s, err := d.sink(ctx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	p, err := startForwarder(ctx, bin, d.e.dbURL, d.e.amqpURL, poll)
	if err != nil {
		return 0, err
	}
	err = d.wait(ctx, s)
	if err == nil {
		err = waitFor(ctx, 2*time.Millisecond, func() (bool, error) {
			var empty bool
			if err := d.e.db.QueryRowContext(ctx, `SELECT NOT EXISTS (SELECT 1 FROM `+tbl+`)`).Scan(&empty); err != nil {
				return false, fmt.Errorf("check %s: %w", tbl, err)
			}
			return empty, nil
		})
	}
	elapsed := time.Since(start)
	if serr := p.stop(); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// latencyRun is one latency measurement at a steady rate, with the idle statements
// before it.
type latencyRun struct {
	lat      []time.Duration // sorted
	achieved float64         // writer rate, msg/s
	idlePerS float64         // statements per second of the idle publisher
}

// watermillLatency starts the forwarder with poll on an empty table, counts its idle
// statements for idleIntervals seconds after 2 s of settling, then has `peer write`
// write latencyMsgs messages at latencyRate, one per transaction, and measures
// commit-to-delivery latency (the writer's wall-clock commit time against the
// consumer's: both processes read the same clock).
func watermillLatency(ctx context.Context, e *env, d *drainer, bin string, poll time.Duration) (latencyRun, error) {
	var run latencyRun
	p, err := startForwarder(ctx, bin, e.dbURL, e.amqpURL, poll)
	if err != nil {
		return run, err
	}
	defer func() { _ = p.stop() }()
	time.Sleep(2 * time.Second)
	q0, err := p.queries(ctx)
	if err != nil {
		return run, err
	}
	idle := time.Duration(idleIntervals) * time.Second
	time.Sleep(idle)
	q1, err := p.queries(ctx)
	if err != nil {
		return run, err
	}
	run.idlePerS = float64(q1-q0) / idle.Seconds()

	ids := messageIDs(latencyMsgs)
	idsFile := filepath.Join(e.tb.TempDir(), "ids")
	if err := os.WriteFile(idsFile, []byte(strings.Join(ids, "\n")), 0o644); err != nil {
		return run, fmt.Errorf("write IDs: %w", err)
	}
	s, err := newSink(d.cons, d.queue, latencyMsgs, ids)
	if err != nil {
		return run, err
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, bin, "write", "-db", e.dbURL, "-topic", peerTopic, "-queue", d.queue,
		"-ids", idsFile, "-rate", strconv.Itoa(latencyRate), "-writers", strconv.Itoa(latencyWriters)).Output()
	if err != nil {
		return run, fmt.Errorf("peer write: %w", err)
	}
	commits := strings.Fields(string(out))
	if len(commits) != latencyMsgs {
		return run, fmt.Errorf("peer write: %d commit times for %d messages", len(commits), latencyMsgs)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.wait(wctx); err != nil {
		return run, err
	}
	var last time.Time
	run.lat = make([]time.Duration, latencyMsgs)
	for i, c := range commits {
		ns, err := strconv.ParseInt(c, 10, 64)
		if err != nil {
			return run, fmt.Errorf("peer write: commit time %q: %w", c, err)
		}
		at := time.Unix(0, ns)
		if at.After(last) {
			last = at
		}
		run.lat[i] = s.recvAt[i].Round(0).Sub(at) // Round(0): the wall clock, as the writer's
	}
	run.achieved = float64(latencyMsgs) / last.Sub(start).Seconds()
	run.lat = sortedCopy(run.lat)
	return run, nil
}

// sideboxLatency is watermillLatency for a sidebox relay with the default
// configuration: the idle statements of its pool, then steadyLoad.
func sideboxLatency(ctx context.Context, e *env, d *drainer) (latencyRun, error) {
	var run latencyRun
	pool, counter := e.countingPool()
	cfg := defaultRelayConfig(d.table)
	cfg.ListenDatabaseURL = e.dbURL
	rl, err := relay.New(pool, cfg, relay.WithConnection(d.brk), relay.WithLogger(e.log), relay.WithRegisterer(d.reg))
	if err != nil {
		return run, fmt.Errorf("relay: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rl.Run(runCtx) }()
	defer func() {
		stop()
		<-done
		_ = pool.Close()
	}()
	time.Sleep(2 * time.Second)
	before := counter.snapshot()
	idle := time.Duration(idleIntervals) * time.Second
	time.Sleep(idle)
	run.idlePerS = float64(counter.snapshot().sub(before).total()) / idle.Seconds()
	lat, achieved, err := steadyLoad(ctx, e, d.cons, d.queue, d.table, latencyRate, latencyMsgs)
	if err != nil {
		return run, err
	}
	run.lat, run.achieved = sortedCopy(lat), achieved
	return run, nil
}

// benchPeer measures, interleaved in one run, the drain of peerRows() rows by raw
// amqp091-go, the sidebox relay and the Watermill forwarder at both poll intervals, then
// commit-to-delivery latency at latencyRate with each publisher's idle statement rate.
func benchPeer(b *testing.B) *report {
	e := newEnv(b)
	rounds := benchRounds()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bin := buildPeer(b)
	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate outbox: %v", err)
	}
	m, reg := newMetrics()
	brk := e.startBroker(m)
	pub := e.dial("publisher")
	cons := e.dial("consumer")
	queue := e.queue(pub, "bench_peer")
	d := &drainer{e: e, table: table, queue: queue, pub: pub, cons: cons, relayDB: e.sidecarPool(), brk: brk, reg: reg, rows: peerRows()}

	type variant struct {
		name  string
		drain func() (float64, error)
		lat   func() (latencyRun, error)
		rates []float64
		runs  []latencyRun
	}
	variants := []*variant{
		{name: fmt.Sprintf("raw amqp091-go, confirms pipelined (window %d)", rawWindow), drain: func() (float64, error) { return d.raw(ctx) }},
		{name: "sidebox relay (defaults)", drain: func() (float64, error) { return d.relay(ctx, defaultRelayConfig(table)) },
			lat: func() (latencyRun, error) { return sideboxLatency(ctx, e, d) }},
	}
	for _, poll := range peerPolls {
		variants = append(variants, &variant{name: fmt.Sprintf("Watermill forwarder, poll %s", poll),
			drain: func() (float64, error) { return d.watermill(ctx, bin, poll) },
			lat:   func() (latencyRun, error) { return watermillLatency(ctx, e, d, bin, poll) }})
	}
	order := func(round int) []*variant { // forward in even rounds, backward in odd ones
		out := make([]*variant, len(variants))
		for i, v := range variants {
			if round%2 == 0 {
				out[i] = v
			} else {
				out[len(out)-1-i] = v
			}
		}
		return out
	}
	for round := range rounds {
		for _, v := range order(round) {
			r, err := v.drain()
			if err != nil {
				b.Fatalf("%s: %v", v.name, err)
			}
			v.rates = append(v.rates, r)
		}
	}
	for round := range rounds {
		for _, v := range order(round) {
			if v.lat == nil {
				continue
			}
			run, err := v.lat()
			if err != nil {
				b.Fatalf("%s: %v", v.name, err)
			}
			v.runs = append(v.runs, run)
		}
	}

	raw, sb := variants[0], variants[1]
	r := newReport(fmt.Sprintf("Side by side with the Watermill forwarder: drain of %s rows, latency at %d msg/s (BenchmarkPeer)", group(int64(d.n())), latencyRate),
		"publisher", "drain msgs/s: best / median (spread)", "all runs", "sidebox ÷ it (best)", "p50", "p99: best / median", "max", "idle statements/s")
	fastestPeer := 0.0
	for _, v := range variants {
		ratio := ""
		if v != sb {
			ratio = fmt.Sprintf("%.2f", best(sb.rates)/best(v.rates))
		}
		if strings.HasPrefix(v.name, "Watermill") {
			fastestPeer = max(fastestPeer, best(v.rates))
		}
		p50, p99, worst, idle := "", "", "", ""
		if len(v.runs) > 0 {
			var p50s, p99s, maxs, idles []float64
			var all []time.Duration
			for _, run := range v.runs {
				p50s = append(p50s, ms(percentile(run.lat, 0.5)))
				p99s = append(p99s, ms(percentile(run.lat, 0.99)))
				maxs = append(maxs, ms(run.lat[len(run.lat)-1]))
				idles = append(idles, run.idlePerS)
				all = append(all, run.lat...)
			}
			p50 = fmt.Sprintf("%.2f ms", median(p50s))
			p99 = fmt.Sprintf("%.2f / %.2f ms", minOf(p99s), median(p99s))
			worst = fmt.Sprintf("%.0f ms", median(maxs))
			idle = fmt.Sprintf("%.1f", median(idles))
			r.plot(series{Plot: "latency", Group: fmt.Sprintf("%d msg/s", latencyRate), Label: v.name, Y: durationsMS(sortedCopy(all))})
		}
		r.row(v.name, bestMedian(v.rates), rates(v.rates), ratio, p50, p99, worst, idle)
		r.plot(series{Plot: "throughput", Group: "drain", Label: v.name, Y: v.rates})
	}
	ceiling := best(sb.rates) / best(raw.rates)
	r.goal("relay drain ÷ raw ceiling (BenchmarkPeer)", fmt.Sprintf("%.2f", ceiling), "≥ 0.90", ceiling >= 0.9)
	vsPeer := best(sb.rates) / fastestPeer
	// A relay publishing with amqp091-go drains no faster than the raw client does.
	r.goal("relay drain ÷ the faster Watermill forwarder", fmt.Sprintf("%.1f× (raw amqp091-go ÷ it: %.1f×)", vsPeer, best(raw.rates)/fastestPeer), "≥ 6×", vsPeer >= 6)
	r.note("Drain: %s rows of 256 B per run; raw and sidebox as in BenchmarkRelayDrain. Watermill: the table `watermill_%s` (watermill-sql's PostgreSQLQueueSchema, rows deleted on ack) is filled through Watermill's own forwarder publisher, 1,000 envelopes per INSERT, and VACUUM ANALYZEd; timed from starting `bench/peer forward` until the consumer has every message and the table is empty.", group(int64(d.n())), peerTopic)
	r.note("Watermill forwarder: watermill v1.5.1, watermill-sql/v4 v4.1.2 (lib/pq, subscribe batch 100, its default), watermill-amqp/v3 v3.0.1 (NewDurableQueueConfig, channel pool 1, confirms on, mandatory, message_id set from its UUID header), forwarder of watermill/components/forwarder; a child process built from bench/peer.")
	r.note("Latency: %s messages at %d msg/s, one per transaction, %d writer connections; sidebox's writer is outbox.Writer in the benchmark (steadyLoad), Watermill's is the forwarder publisher inside a database/sql transaction in `peer write`; latency = the consumer's receive time - the writer's commit return (for Watermill on the wall clock, shared by both processes). p50 and max: median of the rounds; the CDF plot pools every round.", group(latencyMsgs), latencyRate, latencyWriters)
	r.note("Idle statements/s: what each publisher's database handle sent over %d s on an empty table after 2 s of settling (sidebox: its pool, counted in a database/sql driver wrapper; Watermill: a counting wrapper around its Beginner; each transaction's BEGIN and COMMIT not counted for either).", idleIntervals)
	r.note("%d rounds; the publishers take turns in the order above, then backwards, and so on. Duplicate deliveries over all drains: %d.", rounds, d.duplicates)
	e.noteLoad(r)
	b.ReportMetric(best(sb.rates)/fastestPeer, "x-watermill")
	b.ReportMetric(ceiling, "ratio-raw")
	return r
}

func minOf(vs []float64) float64 {
	m := vs[0]
	for _, v := range vs[1:] {
		m = min(m, v)
	}
	return m
}
