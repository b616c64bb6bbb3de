package bench

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

const (
	drainRows   = 50000 // messages per run
	drainRounds = 3     // raw, relay | relay, raw | raw, relay: best of each counts
	rawWindow   = 1000  // outstanding confirms of the raw publisher
)

// benchDrain compares the relay draining a backlog of drainRows outbox rows with
// amqp091-go publishing the same number of messages pipelined with confirms, to the same
// queue with the same consumer attached.
func benchDrain(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate outbox: %v", err)
	}
	m, reg := newMetrics()
	brk := e.startBroker(m)
	pub := e.dial("publisher")
	cons := e.dial("consumer")
	queue := e.queue(pub, "bench_drain")
	relayDB := e.sidecarPool()

	d := &drainer{e: e, table: table, queue: queue, pub: pub, cons: cons, relayDB: relayDB, brk: brk, reg: reg}
	var raw, sb []float64
	runRaw := func() {
		v, err := d.raw(ctx)
		if err != nil {
			b.Fatal(err)
		}
		raw = append(raw, v)
	}
	runRelay := func() {
		v, err := d.relay(ctx, defaultRelayConfig(table))
		if err != nil {
			b.Fatal(err)
		}
		sb = append(sb, v)
	}
	for round := range drainRounds {
		if round%2 == 0 {
			runRaw()
			runRelay()
		} else {
			runRelay()
			runRaw()
		}
	}

	ratio := best(sb) / best(raw)
	r := newReport("Relay drain: 50,000 messages of 256 B to one queue, consumer attached (BenchmarkRelayDrain)",
		"publisher", "msgs/s (best)", "all runs", "ratio", "target")
	r.row(fmt.Sprintf("raw amqp091-go, confirms pipelined (window %d)", rawWindow), rate(best(raw)), allRuns(raw), "", "")
	r.row("sidebox relay (defaults), from a pre-filled outbox", rate(best(sb)), allRuns(sb), fmt.Sprintf("%.2f", ratio), "≥ 0.90")
	r.goal("relay drain ÷ raw amqp091-go ceiling", fmt.Sprintf("%.2f (%s vs %s msgs/s)", ratio, rate(best(sb)), rate(best(raw))), "≥ 0.90", ratio >= 0.9)
	r.plot(series{Plot: "throughput", Group: "drain", Label: "raw amqp091-go", Y: raw})
	r.plot(series{Plot: "throughput", Group: "drain", Label: "sidebox relay", Y: sb})
	r.note("Both publish persistent, mandatory messages to a durable queue through the default exchange; an auto-ack consumer on its own connection counts distinct message IDs.")
	r.note("Raw: from opening the channel until all confirmed and consumed. Relay: from Run (start-up included) until all consumed and the table is empty.")
	r.note("%d rounds, in the order raw, relay | relay, raw | raw, relay; the best run of each counts. The outbox is filled with one INSERT ... SELECT and VACUUM ANALYZEd before each relay run.", drainRounds)
	r.note("CPU time per message over all runs, read from /proc from each run's start until all were consumed: raw, %s; relay, %s.", d.rawCPU, d.relayCPU)
	r.note("Duplicate deliveries over all runs: %d; messages found in the queue before a run (purged): %d.", d.duplicates, d.leftover)
	e.noteLoad(r)
	b.ReportMetric(best(raw), "raw-msgs/s")
	b.ReportMetric(best(sb), "msgs/s")
	b.ReportMetric(ratio, "ratio")
	return r
}

// drainer runs the drain measurements of one benchmark.
type drainer struct {
	e         *env
	table     pg.Table
	queue     string
	pub, cons *amqp.Connection
	relayDB   *sql.DB
	brk       *broker.Broker
	reg       prometheus.Registerer
	rows      int // messages per run; 0: drainRows

	leftover   int // messages found in the queue before a run (purged)
	duplicates int // deliveries beyond the distinct IDs

	rawCPU, relayCPU cpuUse // CPU time of the runs, from their start until all consumed
}

// sink purges what an earlier run left in the queue and attaches a consumer.
func (d *drainer) sink(ctx context.Context) (*sink, error) {
	ch, err := d.cons.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	n, err := ch.QueuePurge(d.queue, false)
	_ = ch.Close()
	if err != nil {
		return nil, fmt.Errorf("purge %s: %w", d.queue, err)
	}
	d.leftover += n
	return newSink(d.cons, d.queue, d.n(), nil)
}

// n is the number of messages per run.
func (d *drainer) n() int {
	if d.rows > 0 {
		return d.rows
	}
	return drainRows
}

// wait waits for the sink and counts its duplicate deliveries.
func (d *drainer) wait(ctx context.Context, s *sink) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	d.duplicates += s.total - d.n()
	return nil
}

// raw publishes drainRows messages with confirms and returns msgs/s until all are
// confirmed and consumed.
func (d *drainer) raw(ctx context.Context) (float64, error) {
	ids := messageIDs(d.n())
	s, err := d.sink(ctx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	d.rawCPU.measure(func() int {
		if err = publishConfirmed(ctx, d.pub, d.queue, ids, rawWindow); err != nil {
			err = fmt.Errorf("raw publish: %w", err)
			return 0
		}
		err = d.wait(ctx, s)
		return d.n()
	})
	if err != nil {
		return 0, err
	}
	return float64(d.n()) / time.Since(start).Seconds(), nil
}

// relay fills the outbox with the run's rows, runs a relay with cfg until all are
// consumed and the table is empty, and returns msgs/s.
func (d *drainer) relay(ctx context.Context, cfg relay.Config) (float64, error) {
	return d.relays(ctx, cfg, []relayConn{{db: d.relayDB, brk: d.brk}})
}

// relayConn is the database pool and the broker connection of one relay.
type relayConn struct {
	db  *sql.DB
	brk *broker.Broker
}

// relays is relay with one relay per conn on the same table, all started together.
func (d *drainer) relays(ctx context.Context, cfg relay.Config, conns []relayConn) (float64, error) {
	tbl := d.table.String()
	// The same payloads as the raw run: the row number in hex, repeated to 256 bytes.
	if _, err := d.e.db.ExecContext(ctx, `INSERT INTO `+tbl+` (exchange, routing_key, payload)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), $3 / 8), 'UTF8') FROM generate_series(0, $2 - 1) AS i`,
		d.queue, d.n(), payloadSize); err != nil {
		return 0, fmt.Errorf("fill outbox: %w", err)
	}
	if _, err := d.e.db.ExecContext(ctx, `VACUUM ANALYZE `+tbl); err != nil {
		return 0, fmt.Errorf("vacuum outbox: %w", err)
	}
	s, err := d.sink(ctx)
	if err != nil {
		return 0, err
	}
	cfg.ListenDatabaseURL = d.e.dbURL
	rls := make([]*relay.Relay, len(conns))
	for i, c := range conns {
		if rls[i], err = relay.New(c.db, cfg, relay.WithConnection(c.brk), relay.WithLogger(d.e.log), relay.WithRegisterer(d.reg)); err != nil {
			return 0, fmt.Errorf("relay: %w", err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, len(rls))
	start := time.Now()
	var elapsed time.Duration
	d.relayCPU.measure(func() int {
		for _, rl := range rls {
			go func() { done <- rl.Run(runCtx) }()
		}
		err = d.wait(ctx, s)
		if err == nil {
			err = waitFor(ctx, 2*time.Millisecond, func() (bool, error) {
				var empty bool
				if err := d.e.db.QueryRowContext(ctx, `SELECT NOT EXISTS (SELECT 1 FROM `+tbl+`)`).Scan(&empty); err != nil {
					return false, fmt.Errorf("check outbox: %w", err)
				}
				return empty, nil
			})
		}
		elapsed = time.Since(start)
		return d.n()
	})
	stop()
	for range rls {
		if rerr := <-done; rerr != nil && err == nil {
			err = fmt.Errorf("relay: %w", rerr)
		}
	}
	if err != nil {
		return 0, err
	}
	return float64(d.n()) / elapsed.Seconds(), nil
}

// defaultRelayConfig is the relay's configuration for table as `sidebox relay` runs it
// without tuning variables: zero values take the defaults.
func defaultRelayConfig(table pg.Table) relay.Config {
	return relay.Config{Table: table.String()}
}
