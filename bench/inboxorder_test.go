package bench

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/pg"
)

const (
	hotKeyRows   = 20000 // rows per run of the hot-key benchmark
	hotKeyRounds = 3     // ordered, unordered | unordered, ordered | ordered, unordered
	orderedBatch = 64    // the processors' BatchSize: the largest, as in issue 16's measurement
	// claimsTimed is how many claims are timed per table size: full batches, 6,400 of the
	// smaller table's 10,000 rows (at 200, its last claims found fewer rows than a batch).
	claimsTimed = 100
)

// fillInboxRows stores n unprocessed rows of 256 bytes for consumer "svc" in table t, in
// one statement, with ordering key key(i) for row i (SQL over the int i; NULL = none),
// and VACUUM ANALYZEs the table.
func fillInboxRows(ctx context.Context, e *env, t pg.Table, n int, key string) error {
	tbl := t.String()
	for done := 0; done < n; done += 1_000_000 {
		k := min(n-done, 1_000_000)
		if _, err := e.db.ExecContext(ctx, `INSERT INTO `+tbl+` (consumer, message_id, payload, ordering_key)
SELECT 'svc', 'm' || i, convert_to(repeat(lpad(to_hex(i), 8, '0'), $2 / 8), 'UTF8'), `+key+`
FROM generate_series($3::int, $3::int + $1 - 1) AS i ORDER BY i`, k, payloadSize, done); err != nil {
			return fmt.Errorf("fill %s: %w", tbl, err)
		}
	}
	if _, err := e.db.ExecContext(ctx, `VACUUM ANALYZE `+tbl); err != nil {
		return fmt.Errorf("vacuum %s: %w", tbl, err)
	}
	return nil
}

// benchEffect is the benchmarks' handler: one row written through the batch's transaction.
func benchEffect(ctx context.Context, tx *sql.Tx, msg inbox.Message) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO bench_effects (message_id) VALUES ($1)`, msg.MessageID)
	return err
}

// processInboxRows runs one Processor with cfg on its own pool until every row of the table is
// processed, and returns the rate.
func processInboxRows(ctx context.Context, e *env, cfg inbox.ProcessorConfig, n int) (float64, error) {
	pool := e.sidecarPool()
	p, err := inbox.NewProcessor(pool, cfg, benchEffect, inbox.WithLogger(e.log))
	if err != nil {
		return 0, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	exited := make(chan error, 1)
	start := time.Now()
	go func() { exited <- p.Run(runCtx) }()
	err = waitFor(ctx, 5*time.Millisecond, func() (bool, error) {
		var left int
		err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT FROM `+cfg.Table+` WHERE processed_at IS NULL LIMIT 1) x`).Scan(&left)
		return left == 0, err
	})
	took := time.Since(start)
	stop()
	if rerr := <-exited; err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	var effects int
	if err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM bench_effects`).Scan(&effects); err != nil {
		return 0, err
	}
	if effects != n {
		return 0, fmt.Errorf("%d effects after processing %d rows", effects, n)
	}
	return float64(n) / took.Seconds(), nil
}

// benchInboxHotKey compares an ordered Processor with an unordered one on the same rows:
// 99 % of one ordering key, the other 1 % each with a key of its own.
func benchInboxHotKey(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	table := pg.Table{Name: "inbox"}
	if err := inbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate inbox: %v", err)
	}
	e.exec(ctx, `CREATE TABLE bench_effects (message_id text PRIMARY KEY)`)

	var runs [2][]float64 // unordered, ordered
	run := func(ordered bool) {
		b.Helper()
		e.exec(ctx, `TRUNCATE inbox, bench_effects`)
		if err := fillInboxRows(ctx, e, table, hotKeyRows, `CASE WHEN i % 100 = 0 THEN 'single-' || i ELSE 'hot' END`); err != nil {
			b.Fatal(err)
		}
		r, err := processInboxRows(ctx, e, inbox.ProcessorConfig{Table: table.String(), Consumer: "svc", Ordered: ordered, BatchSize: orderedBatch}, hotKeyRows)
		if err != nil {
			b.Fatalf("ordered %v: %v", ordered, err)
		}
		runs[orderedIndex(ordered)] = append(runs[orderedIndex(ordered)], r)
	}
	for round := range hotKeyRounds {
		run(round%2 == 0)
		run(round%2 == 1)
	}
	ratio := best(runs[1]) / best(runs[0])
	r := newReport("Ordered inbox processing with one hot key (BenchmarkInboxOrderedHotKey)",
		"processing", "unordered msgs/s (best)", "ordered msgs/s (best)", "all runs: unordered / ordered", "target", "ratio")
	r.row("ordered inbox, one hot key", rate(best(runs[0])), rate(best(runs[1])), rates(runs[0])+" / "+rates(runs[1]), "≥ 0.5", fmt.Sprintf("%.2f", ratio))
	r.note("%s rows of 256 B for one consumer, stored before each run and VACUUM ANALYZEd: 99 %% share one ordering key, every 100th has a key of its own.", group(hotKeyRows))
	r.note("One Processor (BatchSize %d, other settings default) on its own pool, Ordered or not; the handler inserts one row through the batch's transaction. Timed from Run until no row is unprocessed; checked: one benchEffect per row.", orderedBatch)
	r.note("%d rounds in the order ordered, unordered | unordered, ordered | ordered, unordered; the best run of each counts.", hotKeyRounds)
	e.noteLoad(r)
	b.ReportMetric(best(runs[0]), "unordered-msgs/s")
	b.ReportMetric(best(runs[1]), "msgs/s")
	b.ReportMetric(ratio, "ratio")
	return r
}

// benchInboxClaim times an ordered Processor's claims at 10,000 and 1,000,000
// unprocessed rows with 1 % distinct keys (each key 100 rows, interleaved).
func benchInboxClaim(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	e.exec(ctx, `CREATE TABLE bench_effects (message_id text PRIMARY KEY)`)
	sizes := []int{10_000, 1_000_000}
	claims := make([][]time.Duration, len(sizes))
	for i, n := range sizes {
		table := pg.Table{Name: fmt.Sprintf("inbox_%d", n)}
		if err := inbox.Migrate(ctx, e.db, table.String()); err != nil {
			b.Fatalf("migrate %s: %v", table, err)
		}
		e.exec(ctx, `TRUNCATE bench_effects`)
		if err := fillInboxRows(ctx, e, table, n, fmt.Sprintf(`'key-' || (i %% %d)`, n/100)); err != nil {
			b.Fatal(err)
		}
		took, err := timeClaims(ctx, e, inbox.ProcessorConfig{Table: table.String(), Consumer: "svc", Ordered: true, BatchSize: orderedBatch})
		if err != nil {
			b.Fatal(err)
		}
		claims[i] = took
		e.exec(ctx, `DROP TABLE `+table.String())
	}
	p50 := func(i int) time.Duration { return quantile(claims[i], 0.5) }
	ratio := float64(p50(1)) / float64(p50(0))
	r := newReport("Ordered inbox claim by backlog, 1 % distinct keys (BenchmarkInboxOrderedClaim)",
		"claim", "p50 / p99 at 10,000 rows", "p50 / p99 at 1,000,000 rows", "target", "ratio")
	r.row("ordered inbox claim, 1,000,000 vs 10,000 rows", fmtMS(p50(0))+" / "+fmtMS(quantile(claims[0], 0.99)),
		fmtMS(p50(1))+" / "+fmtMS(quantile(claims[1], 0.99)), "≤ 2", fmt.Sprintf("%.2f", ratio))
	r.note("Each table is filled by one INSERT … SELECT generate_series (row i has key i mod n/100: 100 rows per key, interleaved) and VACUUM ANALYZEd.")
	r.note("An ordered Processor (BatchSize %d) with a handler inserting one row runs until it has claimed %d times; a claim is timed from sending the statement until its rows were read (a database/sql driver wrapper on its pool), planning included. The ratio is of the medians.", orderedBatch, claimsTimed)
	e.noteLoad(r)
	b.ReportMetric(float64(p50(0))/1e6, "claim-ms-10000")
	b.ReportMetric(float64(p50(1))/1e6, "claim-ms-1000000")
	b.ReportMetric(ratio, "ratio")
	return r
}

// timeClaims runs an ordered Processor with cfg until it has claimed claimsTimed times
// and returns how long each claim took.
func timeClaims(ctx context.Context, e *env, cfg inbox.ProcessorConfig) ([]time.Duration, error) {
	pool, counter := e.countingPool()
	var mu sync.Mutex
	var took []time.Duration
	enough := make(chan struct{})
	counter.timed = func(q string, _ time.Time, d time.Duration) {
		if strings.Contains(q, "WITH RECURSIVE walk") {
			mu.Lock()
			defer mu.Unlock()
			if took = append(took, d); len(took) == claimsTimed {
				close(enough)
			}
		}
	}
	p, err := inbox.NewProcessor(pool, cfg, benchEffect, inbox.WithLogger(e.log))
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	exited := make(chan error, 1)
	go func() { exited <- p.Run(runCtx) }()
	select {
	case <-enough:
	case err := <-exited:
		return nil, fmt.Errorf("processor stopped: %v", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	stop()
	if err := <-exited; err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Duration(nil), took[:claimsTimed]...), nil
}

func orderedIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}
