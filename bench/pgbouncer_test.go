package bench

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// pooledPath is one way from the service and the relay to the database.
type pooledPath struct {
	name         string
	mode         string // PgBouncer pool mode; "" = direct
	listenDirect bool   // SIDEBOX_LISTEN_DATABASE_URL: the LISTEN connection bypasses PgBouncer
}

// benchLatencyPooled measures commit-to-delivery latency at latencyRate, default relay
// settings, directly and through a private PgBouncer (writers and relay both behind
// it, as a service and its sidecar would be), one path after the other in one run.
func benchLatencyPooled(b *testing.B) *report {
	paths := []pooledPath{
		{name: "direct (reference)"},
		{name: "PgBouncer, transaction mode, LISTEN through it (wake-ups polled)", mode: testenv.PoolTransaction},
		{name: "PgBouncer, transaction mode, SIDEBOX_LISTEN_DATABASE_URL direct", mode: testenv.PoolTransaction, listenDirect: true},
		{name: "PgBouncer, session mode", mode: testenv.PoolSession},
	}
	r := newReport(fmt.Sprintf("Commit-to-delivery latency at %d msg/s through PgBouncer %s vs direct (BenchmarkRelayLatencyPgBouncer)", latencyRate, testenv.PgBouncerVersion()),
		"path", "p50", "p99", "max", "p99 after the first second", "wake-ups", "writer rate")
	for _, p := range paths {
		res, err := latencyThrough(b, p)
		if err != nil {
			b.Fatalf("%s: %v", p.name, err)
		}
		sorted := sortedCopy(res.lat)
		p99 := percentile(sorted, 0.99)
		steady := sortedCopy(res.lat[latencyRate:]) // messages written after the first second of load
		wake := "notification"
		if res.polled {
			wake = "polled"
		}
		r.row(p.name, fmtMS(percentile(sorted, 0.50)), fmtMS(p99), fmtMS(sorted[len(sorted)-1]), fmtMS(percentile(steady, 0.99)), wake, fmt.Sprintf("%.0f msg/s", res.achieved))
		key := "direct"
		switch {
		case p.mode == testenv.PoolSession:
			key = "session"
		case p.listenDirect:
			key = "txn-listen-direct"
		case p.mode != "":
			key = "txn-polled"
		}
		b.ReportMetric(ms(p99), "p99-ms-"+key)
	}
	r.note("Load as in BenchmarkRelayLatency: %s messages, one per transaction, every %d ms, %d writer connections; the writers use the same path as the relay (lib/pq with binary_parameters=yes behind PgBouncer).",
		group(latencyMsgs), time.Second/latencyRate/time.Millisecond, latencyWriters)
	r.note("PgBouncer: a private one per path (default_pool_size 20, otherwise its defaults), in front of the same PostgreSQL; no max_prepared_statements in this version.")
	r.note("Polled wake-ups: the relay claims every 5 ms until a second has passed without rows, then doubles the pause up to the poll interval (1 s). The load starts on an idle relay, so with polled wake-ups the messages of its first second wait for the next poll (up to 1 s); \"p99 after the first second\" leaves them out.")
	return r
}

type pooledResult struct {
	lat      []time.Duration
	achieved float64
	polled   bool
}

func latencyThrough(b *testing.B, p pooledPath) (pooledResult, error) {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		return pooledResult{}, fmt.Errorf("migrate outbox: %w", err)
	}
	dsn, listen := e.dbURL, e.dbURL
	if p.mode != "" {
		dsn = testenv.StartPgBouncer(b, e.dbURL, p.mode).URL(e.dbURL) + "&binary_parameters=yes"
		if !p.listenDirect {
			listen = dsn
		}
	}
	relayDB, err := sql.Open("postgres", dsn)
	if err != nil {
		return pooledResult{}, err
	}
	defer relayDB.Close()
	pg.TunePool(relayDB, pg.SidecarIdleConns(relay.DefaultWorkers, inbox.DefaultWorkers))

	m, reg := newMetrics()
	brk := e.startBroker(m)
	cons := e.dial("consumer")
	queue := e.queue(cons, "bench_pooled")
	cfg := defaultRelayConfig(table)
	cfg.ListenDatabaseURL = listen
	rl, err := relay.New(relayDB, cfg, relay.WithConnection(brk), relay.WithLogger(e.log), relay.WithRegisterer(reg))
	if err != nil {
		return pooledResult{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rl.Run(runCtx) }()
	// Let start-up settle: the LISTEN probe gives its verdict within 2 s.
	time.Sleep(3 * time.Second)
	polled := rl.WakeupsPolled()

	writer := *e
	writer.dbURL = dsn
	lat, achieved, err := steadyLoad(ctx, &writer, cons, queue, table, latencyRate, latencyMsgs)
	stop()
	if rerr := <-done; rerr != nil && err == nil {
		err = rerr
	}
	return pooledResult{lat: lat, achieved: achieved, polled: polled}, err
}
