package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// claimOnce runs one claim of a relay on db the way the dispatcher does, and returns
// the batch's transaction, still open.
func claimOnce(t *testing.T, db *sql.DB, cfg Config, keyedFirst bool) (claimed, *sql.Tx) {
	t.Helper()
	b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
	r, err := New(db, cfg, WithConnection(b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stmts.Close)
	d := &dispatcher{r: r, keyedFirst: !keyedFirst} // claim flips it
	c, tx, err := d.claim(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	return c, tx
}

// refs names the rows of the claim c for Settle.
func refs(c claimed, rows []row) []outboxdb.Ref {
	out := make([]outboxdb.Ref, len(rows))
	for i, rw := range rows {
		out[i] = outboxdb.Ref{ID: rw.id, TID: rw.tid, Rel: c.rel}
	}
	return out
}

// claimConfig is a configuration with the defaults and the given batch size.
func claimConfig(batch int) Config {
	c := Config{BatchSize: batch}
	c.setDefaults()
	return c
}

// pretendRows makes the planner believe table t holds rows rows, without inserting
// them: reltuples is what the planner scales the table's actual pages by.
func pretendRows(t *testing.T, db *sql.DB, table pg.Table, rows int) {
	t.Helper()
	var super bool
	if err := db.QueryRow(`SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Skip("setting a table's statistics takes a superuser")
	}
	for _, q := range []string{
		`ALTER TABLE ` + table.String() + ` SET (autovacuum_enabled = false)`,
		`ANALYZE ` + table.String(),
		`UPDATE pg_class SET reltuples = $1 WHERE oid = '` + table.String() + `'::regclass`,
	} {
		var args []any
		if q[0] == 'U' {
			args = []any{rows}
		}
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// The claim's transaction runs without JIT, commits asynchronously and is ended by the
// server if the relay abandons it, whatever the session's defaults: the settings are
// made inside the transaction, so they also hold behind a transaction-mode pooler.
func TestClaimTransactionSettings(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	cfg := testConfig(table)
	cfg.PublishTimeout = 7 * time.Second
	_, tx := claimOnce(t, db, cfg, true)
	for setting, want := range map[string]string{
		"jit":                                 "off",
		"enable_incremental_sort":             "off",
		"plan_cache_mode":                     "force_generic_plan",
		"enable_sort":                         "off",
		"enable_seqscan":                      "off",
		"synchronous_commit":                  "off",
		"idle_in_transaction_session_timeout": "37s",
	} {
		var got string
		if err := tx.QueryRow(`SHOW ` + setting).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("in the claim's transaction %s = %s, want %s", setting, got, want)
		}
	}
}

// A claim on a table the planner believes to hold 5,000,000 rows is not JIT-compiled:
// compiling it would cost hundreds of milliseconds per claim, while the claim itself
// takes a few. The statistics are set rather than the rows inserted.
func TestClaimIsNotCompiledOnHugeTable(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload)
		SELECT '', 'k', '\x00' FROM generate_series(1, 1000)`); err != nil {
		t.Fatal(err)
	}
	pretendRows(t, db, table, 5_000_000)
	cfg := testConfig(table)
	c, tx := claimOnce(t, db, cfg, true)
	if len(c.rows) != DefaultBatchSize {
		t.Errorf("claimed %d rows, want %d", len(c.rows), DefaultBatchSize)
	}
	// The same statement again, explained, in the claim's own transaction.
	q := newQueries(table)
	for _, keyedFirst := range []bool{true, false} {
		var raw []byte
		if err := tx.QueryRow(`EXPLAIN (ANALYZE, FORMAT JSON) `+q.Variant(keyedFirst, false, false),
			claimArgs(cfg, nil, 4*DefaultBatchSize+16, nil)...).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var plans []struct {
			Plan struct {
				TotalCost float64 `json:"Total Cost"`
			} `json:"Plan"`
			JIT           *json.RawMessage `json:"JIT"`
			ExecutionTime float64          `json:"Execution Time"`
		}
		if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
			t.Fatalf("cannot read the plan: %v", err)
		}
		p := plans[0]
		t.Logf("keyedFirst=%v: cost %.0f, %.1f ms", keyedFirst, p.Plan.TotalCost, p.ExecutionTime)
		if p.JIT != nil {
			t.Errorf("keyedFirst=%v: the claim was JIT-compiled: %s", keyedFirst, *p.JIT)
		}
	}
}

// Every variant of the claim has about the same estimated cost whether the planner
// believes the table holds 10,000 rows, 5,000,000 or 50,000,000, with only unkeyed rows
// and with a mix, as a custom and as a generic plan: nothing in the plan scales with
// the table, so no threshold (JIT, a plan flip) is crossed as a backlog grows.
func TestClaimCostDoesNotGrowWithTable(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	for _, shape := range []struct{ name, fill string }{
		{"unkeyed", `INSERT INTO %s (exchange, routing_key, payload)
			SELECT '', 'k', '\x00' FROM generate_series(1, 1000)`},
		{"mixed", `INSERT INTO %s (exchange, routing_key, payload, ordering_key)
			SELECT '', 'k', '\x00', CASE WHEN i % 2 = 0 THEN 'key-' || (i % 50) END FROM generate_series(1, 1000) i`},
	} {
		table := pg.MustParseTable("outbox_" + shape.name)
		migrate(t, db, table)
		if _, err := db.Exec(strings.ReplaceAll(shape.fill, "%s", table.String())); err != nil {
			t.Fatal(err)
		}
		q := newQueries(table)
		cost := map[int]map[string]float64{}
		for _, rows := range []int{10_000, 5_000_000, 50_000_000} {
			pretendRows(t, db, table, rows)
			cost[rows] = map[string]float64{}
			for kf := range 2 {
				for ac := range 2 {
					for ua := range 2 {
						for _, generic := range []bool{false, true} {
							name := fmt.Sprintf("keyedFirst=%d cursor=%d unkeyedAfter=%d generic=%v", kf, ac, ua, generic)
							cost[rows][name] = explainCost(t, db, q.Variant(kf == 1, ac == 1, ua == 1), generic)
						}
					}
				}
			}
		}
		for name, small := range cost[10_000] {
			big, huge := cost[5_000_000][name], cost[50_000_000][name]
			t.Logf("%s %s: cost %.0f at 10,000 rows, %.0f at 5,000,000, %.0f at 50,000,000", shape.name, name, small, big, huge)
			// Generic plans see the limits as parameters and cost up to MaxBatchSize
			// rows: more than at 10,000 rows, then no more. A key's run is costed at
			// the rows the planner expects per key, which grow with the table when
			// the statistics count a fixed number of keys; the scan stops at
			// MaxBatchSize rows, and the whole claim stays below a few thousand, far
			// from jit_above_cost (100,000) and any change of plan.
			if (big > max(2*small, 2000) || huge > 1.1*big+10) && huge > 5000 {
				t.Errorf("%s %s: the claim's estimated cost grows with the table: %.0f at 10,000 rows, %.0f at 5,000,000, %.0f at 50,000,000",
					shape.name, name, small, big, huge)
			}
		}
	}
}

// explainCost returns the planner's total cost of a claim variant.
func explainCost(t *testing.T, db *sql.DB, claim string, generic bool) float64 {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	// Under the claim's own settings (outboxdb.ClaimSettings), which force generic
	// plans of prepared statements; a plain query with parameters is still planned
	// for their values.
	if _, err := tx.Exec(outboxdb.ClaimSettings(time.Minute)); err != nil {
		t.Fatal(err)
	}
	args := claimArgs(claimConfig(DefaultBatchSize), "key-1", 4*DefaultBatchSize+16, &unkeyedCursor{At: time.Now().Add(-time.Hour), Seq: 1})
	stmt := `EXPLAIN (FORMAT JSON) ` + claim
	if generic {
		if _, err := tx.Exec(`PREPARE claim_cost (int, text, int, bigint, timestamptz, bigint) AS ` + claim); err != nil {
			t.Fatal(err)
		}
		stmt, args = `EXPLAIN (FORMAT JSON) EXECUTE claim_cost(500, 'key-1', 2016, 8388608, now() - interval '1 hour', 1)`, nil
	}
	var raw []byte
	if err := tx.QueryRow(stmt, args...).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if generic {
		// Prepared statements belong to the session, not the transaction.
		if _, err := tx.Exec(`DEALLOCATE claim_cost`); err != nil {
			t.Fatal(err)
		}
	}
	var plans []struct {
		Plan struct {
			TotalCost float64 `json:"Total Cost"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
		t.Fatalf("cannot read the plan: %v", err)
	}
	// enable_sort = off adds disableCost to each sort that no index can spare (of the
	// batch's own rows): the same count at any table size. The rest is the estimate.
	return math.Mod(plans[0].Plan.TotalCost, disableCost)
}

// disableCost is what PostgreSQL (up to 17) adds to the cost of a plan node that a
// setting such as enable_sort = off disables but the plan cannot do without.
const disableCost = 1.0e10

// A claim keeps to the byte budget: rows go while the batch stays within it, and a
// row larger than the budget goes alone. Keyed and unkeyed rows alike.
func TestClaimKeepsToByteBudget(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	for _, q := range []string{
		`INSERT INTO outbox (exchange, routing_key, payload) VALUES ('', 'k', decode(repeat('ab', 2 << 20), 'hex'))`,
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT '', 'k', decode(repeat('ab', 300 << 10), 'hex'), CASE WHEN i > 10 THEN 'key-' || i END
		 FROM generate_series(1, 20) i`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(table)
	cfg.BatchBytes = 1 << 20
	for i, want := range []struct{ rows, bytes int }{
		{3, 900 << 10},                 // keyed first: three keyed rows of 300 KiB
		{1, 2 << 20},                   // the 2 MiB row, alone
		{3, 900 << 10}, {3, 900 << 10}, // the rest, three at a time
	} {
		c, tx := claimOnce(t, db, cfg, i%2 == 0)
		got := 0
		var ids []string
		for _, rw := range c.rows {
			got += len(rw.payload)
			ids = append(ids, rw.id)
		}
		if len(c.rows) != want.rows || got != want.bytes || c.bytes != got {
			t.Errorf("claim %d: %d rows of %d bytes (reported %d), want %d rows of %d bytes", i, len(c.rows), got, c.bytes, want.rows, want.bytes)
		}
		if _, err := tx.Exec(`DELETE FROM outbox WHERE id::text = ANY($1)`, pq.Array(ids)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// Claim times over a drain of a large backlog, without a broker: claim a batch, delete
// it, commit, as the relay does, and report the claim's time by thirds of the drain.
// Set SIDEBOX_TEST_DRAIN_ROWS (e.g. 5000000) to run it; it takes minutes.
func TestClaimTimeOverDrain(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SIDEBOX_TEST_DRAIN_ROWS"))
	if n <= 0 {
		t.Skip("set SIDEBOX_TEST_DRAIN_ROWS to drain a backlog of that many rows")
	}
	db, _, table := outboxDB(t)
	for done := 0; done < n; done += 1_000_000 {
		if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload)
			SELECT '', 'k', convert_to(repeat(lpad(to_hex(i), 8, '0'), 32), 'UTF8')
			FROM generate_series($1::int, $1::int + $2 - 1) i`, done, min(n-done, 1_000_000)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`VACUUM ANALYZE outbox`); err != nil {
		t.Fatal(err)
	}
	b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
	r, err := New(db, testConfig(table), WithConnection(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.stmts.Close()
	d := &dispatcher{r: r}
	var times []time.Duration
	var buffers []int // shared buffers the claim touched, every 100th claim
	for left := n; left > 0; {
		from, cursor, keyedFirst := d.unkeyedFrom, d.cursor, !d.keyedFirst
		start := time.Now()
		c, tx, err := d.claim(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Since(start))
		if len(c.rows) == 0 {
			t.Fatalf("empty claim with %d rows left", left)
		}
		if len(times)%100 == 1 {
			// The same claim again in its own transaction, which holds its rows: the
			// buffers it touches are the claim's work, whatever the machine's load.
			var cur any
			if cursor != nil {
				cur = *cursor
			}
			var raw []byte
			if err := tx.QueryRow(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+r.q.Variant(keyedFirst, cursor != nil, from != nil),
				claimArgs(r.cfg, cur, d.maxVisits(), from)...).Scan(&raw); err != nil {
				t.Fatal(err)
			}
			var plans []struct {
				Plan struct {
					Hit  int `json:"Shared Hit Blocks"`
					Read int `json:"Shared Read Blocks"`
				} `json:"Plan"`
			}
			if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("cannot read the plan: %v", err)
			}
			buffers = append(buffers, plans[0].Plan.Hit+plans[0].Plan.Read)
		}
		if _, _, err := r.q.Settle(context.Background(), r.stmts, tx, refs(c, c.rows), nil, 10); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		left -= len(c.rows)
	}
	q := func(ds []time.Duration, p float64) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[min(int(p*float64(len(s))), len(s)-1)]
	}
	third := len(times) / 3
	bt := len(buffers) / 3
	med := func(xs []int) int {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	if bt > 0 {
		t.Logf("buffers per claim, median by thirds: %d / %d / %d; max %d",
			med(buffers[:bt]), med(buffers[bt:2*bt]), med(buffers[2*bt:]), slices.Max(buffers))
	}
	t.Logf("%d rows, %d claims: p50 %v, p99 %v; p50 by thirds %v / %v / %v; p99 by thirds %v / %v / %v",
		n, len(times), q(times, 0.5), q(times, 0.99),
		q(times[:third], 0.5), q(times[third:2*third], 0.5), q(times[2*third:], 0.5),
		q(times[:third], 0.99), q(times[third:2*third], 0.99), q(times[2*third:], 0.99))
}

// While it drains, the claim's unkeyed part starts after the last unkeyed row claimed,
// not at the start of the index where the deleted rows' entries wait for a vacuum;
// rows it passed (here a batch that was rolled back, as when no confirm came) are
// claimed when nothing is left after the cursor.
func TestUnkeyedCursorComesBackForRowsLeftBehind(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload)
		SELECT '', 'k', convert_to(i::text, 'UTF8') FROM generate_series(1, 30) i`); err != nil {
		t.Fatal(err)
	}
	b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
	cfg := testConfig(table)
	cfg.BatchSize = 10
	r, err := New(db, cfg, WithConnection(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.stmts.Close()
	d := &dispatcher{r: r}
	claim := func(settle bool) string {
		t.Helper()
		c, tx, err := d.claim(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rw := range c.rows {
			got = append(got, string(rw.payload))
		}
		if !settle {
			_ = tx.Rollback()
			return strings.Join(got, ",")
		}
		if _, _, err := r.q.Settle(context.Background(), r.stmts, tx, refs(c, c.rows), nil, 10); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, ",")
	}
	for i, want := range []struct {
		settle bool
		rows   string
	}{
		{false, "1,2,3,4,5,6,7,8,9,10"}, // no confirm: the rows stay
		{true, "11,12,13,14,15,16,17,18,19,20"},
		{true, "21,22,23,24,25,26,27,28,29,30"},
		{true, "1,2,3,4,5,6,7,8,9,10"}, // nothing after the cursor: from the start
	} {
		if got := claim(want.settle); got != want.rows {
			t.Errorf("claim %d: rows %s, want %s", i+1, got, want.rows)
		}
	}
}

// The relay's start-up check names why autovacuum does not keep the table's
// statistics: off on the server, or off for the table.
func TestAutovacuumCheckNamesWhyItIsOff(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	var server bool
	if err := db.QueryRow(`SELECT current_setting('autovacuum') = 'on'`).Scan(&server); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	why, err := outboxdb.Autovacuum(ctx, db, table)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]string{true: "", false: "autovacuum is off on the server"}[server]; why != want {
		t.Errorf("autovacuum on the server %v, table default: %q, want %q", server, why, want)
	}
	testenv.Exec(t, db, `ALTER TABLE outbox SET (autovacuum_enabled = false)`)
	if why, err = outboxdb.Autovacuum(ctx, db, table); err != nil {
		t.Fatal(err)
	}
	if want := map[bool]string{true: "autovacuum_enabled = false on the table", false: "autovacuum is off on the server"}[server]; why != want {
		t.Errorf("autovacuum on the server %v, off for the table: %q, want %q", server, why, want)
	}
}

// The claim's unkeyed part reads outbox_unkeyed_idx in claim order and stops at the
// batch, however many published rows the table keeps (audit retention). Beside
// 1,000,000 kept rows the planner used to prefer outbox_available_idx, which also
// holds the keyed rows, under an incremental sort on seq: every unkeyed-first claim
// then read and sorted all the waiting rows of one commit time (the claim took 1.3 ×
// as long as without kept rows, bench "Claim with 1000000 kept rows"). The claim's
// transaction turns incremental sorts off. The rows are real: the plan flips with the
// table's size, which statistics alone do not reproduce.
func TestUnkeyedClaimUsesItsIndexBesideKeptRows(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	// Kept rows first, a quarter of them keyed; then the waiting rows of one commit,
	// half of them keyed.
	testenv.Exec(t, db, `INSERT INTO outbox (routing_key, payload, ordering_key, created_at, available_at, published_at)
		SELECT 'rk', convert_to(lpad(g::text, 32, '0'), 'UTF8'), CASE WHEN g % 4 = 0 THEN 'k' || (g % 1000) END,
			now() - interval '2 days', now() - interval '2 days', now() - interval '1 day'
		FROM generate_series(1, 1000000) g`)
	testenv.Exec(t, db, `INSERT INTO outbox (routing_key, payload, ordering_key)
		SELECT 'rk', convert_to(repeat('x', 256), 'UTF8'), CASE WHEN g % 2 = 0 THEN 'k' || (g % 1000) END FROM generate_series(1, 10000) g`)
	testenv.Exec(t, db, `VACUUM ANALYZE outbox`)

	cfg := claimConfig(DefaultBatchSize)
	cfg.Table = table.String()
	_, tx := claimOnce(t, db, cfg, false) // in the claim's transaction, with its settings
	q := newQueries(table)
	// As a plain query and as the relay runs it: prepared, with its generic plan.
	for i, ua := range []bool{false, true} {
		if _, err := tx.Exec(fmt.Sprintf(`PREPARE kept_claim_%d (int, text, int, bigint, timestamptz, bigint) AS %s`, i, q.Variant(false, false, ua))); err != nil {
			t.Fatal(err)
		}
	}
	for _, explain := range []struct {
		name string
		sql  string
		args []any
	}{
		{"plain", `EXPLAIN (FORMAT TEXT) ` + q.Variant(false, false, false), claimArgs(cfg, nil, 4*DefaultBatchSize+16, nil)},
		{"prepared", fmt.Sprintf(`EXPLAIN (FORMAT TEXT) EXECUTE kept_claim_0(%d, NULL, %d, %d, NULL, NULL)`, cfg.BatchSize, 4*DefaultBatchSize+16, cfg.BatchBytes), nil},
		// After the unkeyed cursor, as a drain claims: the variant that switched to
		// the sort by itself before the claim forced generic plans.
		{"prepared after the unkeyed cursor", fmt.Sprintf(`EXPLAIN (FORMAT TEXT) EXECUTE kept_claim_1(%d, NULL, %d, %d, 'epoch', 0)`, cfg.BatchSize, 4*DefaultBatchSize+16, cfg.BatchBytes), nil},
	} {
		rows, err := tx.Query(explain.sql, explain.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		_ = rows.Close()
		if text := strings.Join(plan, "\n"); strings.Contains(text, "Incremental Sort") || !strings.Contains(text, "outbox_unkeyed_idx") {
			t.Errorf("%s: the unkeyed part of the claim does not read outbox_unkeyed_idx in claim order:\n%s", explain.name, text)
		}
	}
}

// The relay's prepared claim is planned once per connection and variant, not at every
// claim: left to choose, PostgreSQL plans it anew each time on any table it holds
// statistics for (the generic plan's estimate stays above the custom one's), which
// costs about 4 ms per claim, as much as running it (measured at 50,000 and 1,000,000
// rows).
func TestClaimIsPlannedOnce(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	for _, q := range []string{
		`INSERT INTO outbox (exchange, routing_key, payload) SELECT '', 'k', '\x00' FROM generate_series(1, 10000)`,
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key) SELECT '', 'k', '\x00', 'key-' || (i % 100) FROM generate_series(1, 10000) i`,
		`ANALYZE outbox`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.SetMaxOpenConns(1) // every claim and the check below on one session
	b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
	cfg := testConfig(table)
	cfg.Prepare = "on" // in auto mode a pool of one connection, too small to look at, is not prepared
	r, err := New(db, cfg, WithConnection(b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stmts.Close)
	d := &dispatcher{r: r}
	const claims = 12 // PostgreSQL weighs a generic plan after the fifth execution
	for range claims {
		c, tx, err := d.claim(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(c.rows) == 0 {
			t.Fatal("the claim took no rows")
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
	var generic, custom int
	if err := db.QueryRow(`SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
		FROM pg_prepared_statements WHERE statement LIKE '%WITH RECURSIVE walk%'`).Scan(&generic, &custom); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d claims: %d generic plans, %d custom plans", claims, generic, custom)
	if generic+custom != claims {
		t.Fatalf("the session ran %d prepared claims, want %d: the claim was not prepared", generic+custom, claims)
	}
	if custom != 0 {
		t.Errorf("%d of %d claims were planned for their parameters, want none", custom, claims)
	}
}

// TestClaimIsPlannedBeforeTheFirstBatch: a prepared statement is planned at its first
// execution on a connection, and the claim's plan takes 2 to 30 ms to make. Made
// lazily, the plans of the eight claim variants held up the first batches after a start
// by tens of milliseconds. Once it has nothing to do, the relay plans them on the
// connections it is about to use: one per worker and one for its other statements.
func TestClaimIsPlannedBeforeTheFirstBatch(t *testing.T) {
	t.Parallel()
	t.Run("planned on the pool's connections", func(t *testing.T) {
		t.Parallel()
		db, _, table := outboxDB(t)
		cfg := testConfig(table)
		cfg.Prepare = "on"
		cfg.Workers = 2
		want := cfg.Workers + 1
		db.SetMaxOpenConns(want + 1) // and one left to the application
		db.SetMaxIdleConns(want + 1)
		b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
		r, err := New(db, cfg, WithConnection(b))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.stmts.Close)
		ctx := context.Background()
		d := &dispatcher{r: r}
		_, tx, err := d.claim(ctx) // prepares the statements
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		// The connections a relay has open by the time it is idle (its claims, peeks,
		// the flag; in auto mode the look at the pooling takes three).
		held := make([]*sql.Conn, want+1)
		for i := range held {
			if held[i], err = db.Conn(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range held {
			_ = c.Close()
		}
		d.warmUp(ctx)
		d.warming.Wait()

		// Every connection the pool holds, at once, and the plans each session made.
		open := db.Stats().OpenConnections
		variants := len(r.q.Variants())
		warm := 0
		for i := range open {
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var planned int
			if err := c.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE generic_plans > 0)
				FROM pg_prepared_statements WHERE statement LIKE '%WITH RECURSIVE walk%'`).Scan(&planned); err != nil {
				t.Fatal(err)
			}
			t.Logf("connection %d of %d: %d of %d claim variants planned", i+1, open, planned, variants)
			if planned == variants {
				warm++
			}
		}
		if warm != want {
			t.Errorf("%d connections hold a plan of every claim variant, want %d (one per worker and one more)", warm, want)
		}
	})
	t.Run("when the relay has nothing to do", func(t *testing.T) {
		t.Parallel()
		db, dsn, table := outboxDB(t)
		cfg := testConfig(table)
		cfg.Prepare = "on"
		warmed := make(chan struct{})
		startRelay(t, db, dsn, testenv.AMQPURL(t), cfg, func(r *Relay) { r.afterWarm = func() { close(warmed) } })
		select {
		case <-warmed:
		case <-time.After(30 * time.Second):
			t.Fatal("an idle relay did not plan its statements ahead")
		}
	})
}

// TestWarmLocksNothing: planning ahead runs every claim variant on due rows, keyed and
// not, and must neither lock nor write any of them.
func TestWarmLocksNothing(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		SELECT '', 'k', '\x00', CASE WHEN i % 2 = 0 THEN 'key-' || (i % 5) END FROM generate_series(1, 100) i`); err != nil {
		t.Fatal(err)
	}
	b := broker.New([]string{"amqp://127.0.0.1:1/"}, broker.Config{Name: "unused"}, zap.NewNop(), nil)
	cfg := testConfig(table)
	cfg.Prepare = "on"
	r, err := New(db, cfg, WithConnection(b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stmts.Close)
	ctx := context.Background()
	r.stmts.Prepare(ctx, r.q.hot()...)
	for _, prepared := range []bool{true, false} {
		if !prepared {
			r.stmts = pg.NewStatements(db, pg.PrepareOff, "", nil)
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, r.txSettings); err != nil {
			t.Fatal(err)
		}
		if err := r.q.Warm(ctx, r.stmts, tx); err != nil {
			t.Fatal(err)
		}
		var wrote bool
		if err := tx.QueryRowContext(ctx, `SELECT txid_current_if_assigned() IS NOT NULL`).Scan(&wrote); err != nil {
			t.Fatal(err)
		}
		var free int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM outbox FOR UPDATE SKIP LOCKED) l`).Scan(&free); err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback()
		if wrote {
			t.Errorf("prepared %v: planning ahead locked or wrote rows (the transaction has an ID)", prepared)
		}
		if free != 100 {
			t.Errorf("prepared %v: %d of 100 rows free to lock while planning ahead held its transaction, want all", prepared, free)
		}
	}
}
