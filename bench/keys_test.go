package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// BenchmarkRelayKeys: the relay draining 20,000 rows (SIDEBOX_BENCH_KEYS_ROWS) of 256
// bytes with no ordering key, spread over 10 ordering keys and all on one key, side by
// side in one run, a consumer attached.
func BenchmarkRelayKeys(b *testing.B) {
	for range b.N {
		emit(b, benchKeys(b))
	}
}

const (
	defaultKeysRows = 20000 // SIDEBOX_BENCH_KEYS_ROWS
	keysRounds      = 3
)

// keyShape is one way of spreading the rows over ordering keys.
type keyShape struct {
	name   string
	keys   int // 0: no ordering key
	target string
}

// benchKeys measures the relay's drain rate for each keyShape, in rounds of alternating
// order; the best run of each counts.
func benchKeys(b *testing.B) *report {
	e := newEnv(b)
	rows := defaultKeysRows
	if v := os.Getenv("SIDEBOX_BENCH_KEYS_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("SIDEBOX_BENCH_KEYS_ROWS: want a positive integer, got %q", v)
		}
		rows = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	table := pg.Table{Name: "outbox"}
	if err := outbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate outbox: %v", err)
	}
	m, reg := newMetrics()
	brk := e.startBroker(m)
	pub := e.dial("publisher")
	cons := e.dial("consumer")
	queue := e.queue(pub, "bench_keys")
	d := &drainer{e: e, table: table, queue: queue, pub: pub, cons: cons, relayDB: e.sidecarPool(), brk: brk, reg: reg}

	shapes := []keyShape{
		{"no ordering key", 0, ""},
		{"10 ordering keys", 10, "≥ 0.80"},
		{"one ordering key", 1, "≥ 0.50"},
	}
	runs := make([][]float64, len(shapes))
	for round := range keysRounds {
		for k := range shapes {
			i := k
			if round%2 == 1 {
				i = len(shapes) - 1 - k
			}
			v, err := d.keyed(ctx, defaultRelayConfig(table), rows, shapes[i].keys)
			if err != nil {
				b.Fatalf("%s: %v", shapes[i].name, err)
			}
			runs[i] = append(runs[i], v)
		}
	}

	r := newReport(fmt.Sprintf("Ordering keys: %s messages of 256 B to one queue, consumer attached (BenchmarkRelayKeys)", group(int64(rows))),
		"rows", "msgs/s (best)", "all runs", "ratio to no key", "target")
	base := best(runs[0])
	for i, s := range shapes {
		ratio := ""
		if i > 0 {
			ratio = fmt.Sprintf("%.2f", best(runs[i])/base)
			b.ReportMetric(best(runs[i])/base, fmt.Sprintf("ratio-%dkeys", s.keys))
		}
		r.row(s.name, rate(best(runs[i])), rates(runs[i]), ratio, s.target)
	}
	b.ReportMetric(base, "msgs/s")
	r.note("The relay with the default configuration (batch 500, 2 workers) drains a pre-filled outbox (one INSERT ... SELECT, VACUUM ANALYZEd before each run); key i %% n for n keys. Timed from Run until all consumed and the table is empty.")
	r.note("A key's consecutive due rows are claimed together and published pipelined on one channel; keys spread over the workers.")
	r.note("%d rounds, in the order no key, 10 keys, one key | the reverse | as the first; the best run of each counts.", keysRounds)
	r.note("Duplicate deliveries over all runs: %d; messages found in the queue before a run (purged): %d.", d.duplicates, d.leftover)
	e.noteLoad(r)
	return r
}

// keyed fills the outbox with n rows spread over keys ordering keys (0: none), runs a
// relay with cfg until all are consumed and the table is empty, and returns msgs/s.
func (d *drainer) keyed(ctx context.Context, cfg relay.Config, n, keys int) (float64, error) {
	tbl := d.table.String()
	if _, err := d.e.db.ExecContext(ctx, `INSERT INTO `+tbl+` (exchange, routing_key, payload, ordering_key)
SELECT '', $1, convert_to(repeat(lpad(to_hex(i), 8, '0'), $3 / 8), 'UTF8'), CASE WHEN $4 > 0 THEN 'key-' || (i % $4) END
FROM generate_series(0, $2 - 1) AS i`,
		d.queue, n, payloadSize, keys); err != nil {
		return 0, fmt.Errorf("fill outbox: %w", err)
	}
	if _, err := d.e.db.ExecContext(ctx, `VACUUM ANALYZE `+tbl); err != nil {
		return 0, fmt.Errorf("vacuum outbox: %w", err)
	}
	ch, err := d.cons.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	left, err := ch.QueuePurge(d.queue, false)
	_ = ch.Close()
	if err != nil {
		return 0, fmt.Errorf("purge %s: %w", d.queue, err)
	}
	d.leftover += left
	s, err := newSink(d.cons, d.queue, n, nil)
	if err != nil {
		return 0, err
	}
	cfg.ListenDatabaseURL = d.e.dbURL
	rl, err := relay.New(d.relayDB, cfg, relay.WithConnection(d.brk), relay.WithLogger(d.e.log), relay.WithRegisterer(d.reg))
	if err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- rl.Run(runCtx) }()
	err = s.wait(ctx)
	if err == nil {
		d.duplicates += s.total - n
		err = waitFor(ctx, 2*time.Millisecond, func() (bool, error) {
			var empty bool
			if err := d.e.db.QueryRowContext(ctx, `SELECT NOT EXISTS (SELECT 1 FROM `+tbl+`)`).Scan(&empty); err != nil {
				return false, fmt.Errorf("check outbox: %w", err)
			}
			return empty, nil
		})
	}
	elapsed := time.Since(start)
	stop()
	if rerr := <-done; rerr != nil && err == nil {
		err = fmt.Errorf("relay: %w", rerr)
	}
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}
