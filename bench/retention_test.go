package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// BenchmarkClaimRetention: the relay's claim on an outbox that keeps 1,000,000
// published rows for audit (SIDEBOX_OUTBOX_RETENTION) and on an outbox partitioned by
// day that keeps as many over the last three days (SIDEBOX_OUTBOX_PARTITIONS=daily),
// next to the same claim on an outbox that deletes them (the default), with the same
// 10,000 rows waiting in all three.
func BenchmarkClaimRetention(b *testing.B) {
	for range b.N {
		emit(b, benchClaimRetention(b))
	}
}

// keptRows is the number of published rows the retained outbox holds
// (SIDEBOX_BENCH_KEPT_ROWS).
func keptRows() int {
	n, err := strconv.Atoi(envOr("SIDEBOX_BENCH_KEPT_ROWS", "1000000"))
	if err != nil || n < 0 {
		return 1000000
	}
	return n
}

func benchClaimRetention(tb *testing.B) *report {
	e := newEnv(tb)
	ctx := context.Background()
	kept := keptRows()
	const pending, claims = 10000, 300
	deleted, retained, partitioned := pg.MustParseTable("bench.deleted"), pg.MustParseTable("bench.retained"), pg.MustParseTable("bench.partitioned")
	for _, t := range []pg.Table{deleted, retained} {
		if err := outbox.Migrate(ctx, e.db, t.String()); err != nil {
			tb.Fatal(err)
		}
	}
	if err := outbox.MigratePartitioned(ctx, e.db, partitioned.String()); err != nil {
		tb.Fatal(err)
	}
	// The partitions a relay with the default retention (72h) has: the three past
	// days', today's and the next PartitionsAhead days', and the default one.
	for d := 1; d <= 3; d++ {
		e.exec(ctx, `DO $$ DECLARE day date := (now() AT TIME ZONE 'UTC')::date - `+strconv.Itoa(d)+`; BEGIN
			EXECUTE format('CREATE TABLE bench.partitioned_p%s PARTITION OF bench.partitioned FOR VALUES FROM (%L) TO (%L)',
				to_char(day, 'YYYYMMDD'), day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC'); END $$`)
	}
	if _, err := outboxdb.MaintainPartitions(ctx, e.db, partitioned, relay.DefaultPartitionedRetention); err != nil {
		tb.Fatal(err)
	}
	// The kept rows were written and published before the waiting ones: they come
	// first in every index that would hold them. A quarter of them have a key.
	start := time.Now()
	e.exec(ctx, `INSERT INTO bench.retained (routing_key, payload, ordering_key, created_at, available_at, published_at)
		SELECT 'rk', convert_to(lpad(g::text, 32, '0'), 'UTF8'), CASE WHEN g % 4 = 0 THEN 'k' || (g % 1000) END,
			now() - interval '2 days', now() - interval '2 days', now() - interval '1 day'
		FROM generate_series(1, $1) g`, kept)
	// The same number kept in the partitioned outbox, spread over the three past days.
	e.exec(ctx, `INSERT INTO bench.partitioned (routing_key, payload, ordering_key, created_at, available_at, published_at)
		SELECT 'rk', convert_to(lpad(g::text, 32, '0'), 'UTF8'), CASE WHEN g % 4 = 0 THEN 'k' || (g % 1000) END,
			now() - (1 + g % 3) * interval '1 day', now() - (1 + g % 3) * interval '1 day', now() - (1 + g % 3) * interval '1 day' + interval '1 second'
		FROM generate_series(1, $1) g`, kept)
	loaded := time.Since(start)
	all := []pg.Table{deleted, retained, partitioned}
	for _, t := range all {
		e.exec(ctx, `INSERT INTO `+t.String()+` (routing_key, payload, ordering_key)
			SELECT 'rk', convert_to(repeat('x', $2), 'UTF8'), CASE WHEN g % 2 = 0 THEN 'k' || (g % 1000) END
			FROM generate_series(1, $1) g`, pending, payloadSize)
		e.exec(ctx, `VACUUM ANALYZE `+t.String())
	}
	var nparts int
	if err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'bench.partitioned'::regclass`).Scan(&nparts); err != nil {
		tb.Fatal(err)
	}

	// Prepared, as the relay runs its claim on a direct connection (PrepareAuto).
	st := pg.NewStatements(e.db, pg.PrepareOn, "prepare", nil)
	settings := outboxdb.ClaimSettings(time.Minute)
	measure := func(t pg.Table, keyedFirst bool) (time.Duration, int) {
		q := outboxdb.New(t, relay.MaxBatchSize)
		tx, err := e.db.BeginTx(ctx, nil)
		if err != nil {
			tb.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.ExecContext(ctx, settings); err != nil {
			tb.Fatal(err)
		}
		t0 := time.Now()
		c, err := q.Claim(ctx, st, tx, outboxdb.Claim{BatchSize: relay.DefaultBatchSize, BatchBytes: relay.DefaultBatchBytes,
			KeyedFirst: keyedFirst, MaxVisits: 4*relay.DefaultBatchSize + 16})
		if err != nil {
			tb.Fatal(err)
		}
		return time.Since(t0), len(c.Rows)
	}
	// Interleaved, the same claim variants on both tables; each claim rolls back, so
	// every one sees the same rows.
	var times [3][]time.Duration
	for i := range claims {
		for k, t := range all {
			d, n := measure(t, i%2 == 0)
			if n != relay.DefaultBatchSize {
				tb.Fatalf("claim on %s returned %d rows, want %d", t, n, relay.DefaultBatchSize)
			}
			times[k] = append(times[k], d)
		}
	}
	explain := func(t pg.Table) (string, string) {
		q := outboxdb.New(t, relay.MaxBatchSize)
		c := outboxdb.Claim{BatchSize: relay.DefaultBatchSize, BatchBytes: relay.DefaultBatchBytes, KeyedFirst: true, MaxVisits: 4*relay.DefaultBatchSize + 16}
		tx, err := e.db.BeginTx(ctx, nil)
		if err != nil {
			tb.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.ExecContext(ctx, settings); err != nil {
			tb.Fatal(err)
		}
		rs, err := tx.QueryContext(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) `+q.SQL(c), c.Args()...)
		if err != nil {
			tb.Fatal(err)
		}
		defer rs.Close()
		var buffers, total string
		for rs.Next() {
			var line string
			if err := rs.Scan(&line); err != nil {
				tb.Fatal(err)
			}
			if os.Getenv("SIDEBOX_BENCH_EXPLAIN") != "" {
				fmt.Println(line)
			}
			l := strings.TrimSpace(line)
			if buffers == "" && strings.HasPrefix(l, "Buffers:") {
				buffers = strings.TrimPrefix(l, "Buffers: ")
			}
			if strings.HasPrefix(l, "Execution Time:") {
				total = strings.TrimPrefix(l, "Execution Time: ")
			}
		}
		return buffers, total
	}
	bufD, exD := explain(deleted)
	bufR, exR := explain(retained)
	bufP, exP := explain(partitioned)

	p50D, p50R := quantile(times[0], 0.5), quantile(times[1], 0.5)
	p90D, p90R := quantile(times[0], 0.9), quantile(times[1], 0.9)
	p50P, p90P := quantile(times[2], 0.5), quantile(times[2], 0.9)
	ratio, ratioP := float64(p50R)/float64(p50D), float64(p50P)/float64(p50D)
	tb.ReportMetric(ratio, "kept/deleted_p50")
	tb.ReportMetric(ratioP, "partitioned/deleted_p50")
	r := newReport(fmt.Sprintf("Claim with %d kept rows (audit retention) vs delete-on-confirm", kept),
		"outbox", "rows waiting", "rows kept", "claim p50", "claim p90", "EXPLAIN ANALYZE (one claim)")
	r.row("delete on confirm (default)", "10,000", "0", fmtMS(p50D), fmtMS(p90D), exD+"; buffers "+bufD)
	r.row("SIDEBOX_OUTBOX_RETENTION, kept rows", "10,000", fmt.Sprintf("%d", kept), fmtMS(p50R), fmtMS(p90R), exR+"; buffers "+bufR)
	r.row(fmt.Sprintf("SIDEBOX_OUTBOX_PARTITIONS=daily, %d partitions", nparts), "10,000", fmt.Sprintf("%d", kept), fmtMS(p50P), fmtMS(p90P), exP+"; buffers "+bufP)
	r.note("kept ÷ deleted, claim p50: **%.2f** (target ≤ 1.10)", ratio)
	r.note("partitioned ÷ deleted, claim p50: **%.2f** (each partition's claim index is read: the cost grows with the number of partitions, docs/DESIGN.md \"Retention\")", ratioP)
	r.note("%d claims of %d rows per table, interleaved, keyed part first in every other one, each rolled back so that all see the same rows; in the relay's claim transaction (JIT and incremental sorts off) and prepared, as the relay runs them on a direct connection; the tables vacuumed and analysed; kept rows loaded in %s", claims, relay.DefaultBatchSize, loaded.Round(time.Second))
	r.note("load average at start: %s", e.load)
	return r
}
