package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// maxClaimBuffersPerRow bounds the buffers a claim reads per row it claims.
const maxClaimBuffersPerRow = 24

// With a backlog of 100,000 rows of every shape (deep keys, many single-row keys,
// unkeyed rows, keys blocked by dead heads), every variant of the claim uses the
// indexes, never scans the table, and takes only runs: a key's rows from its head on,
// none behind a live or dead row of its key that it left out.
func TestClaimUsesIndexesOnLargeBacklog(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	for _, q := range []string{
		// 20 deep keys, 3,000 rows each.
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT 'x', 'k', '\x00', 'deep-' || (i % 20) FROM generate_series(1, 60000) i`,
		// 10,000 keys of one row each.
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT 'x', 'k', '\x00', 'single-' || i FROM generate_series(1, 10000) i`,
		// 500 keys whose head is dead, each with a live successor.
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key, dead_at, attempts)
		 SELECT 'x', 'k', '\x00', 'blocked-' || i, now(), 10 FROM generate_series(1, 500) i`,
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT 'x', 'k', '\x00', 'blocked-' || i FROM generate_series(1, 500) i`,
		// 29,000 unkeyed rows, 1,000 of them not due yet.
		`INSERT INTO outbox (exchange, routing_key, payload) SELECT 'x', 'k', '\x00' FROM generate_series(1, 28000) i`,
		`INSERT INTO outbox (exchange, routing_key, payload, available_at)
		 SELECT 'x', 'k', '\x00', now() + interval '1 hour' FROM generate_series(1, 1000) i`,
		`ANALYZE outbox`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	q := newQueries(table)
	const batch = 500
	cursor := "deep-5"
	for _, keyedFirst := range []bool{true, false} {
		for _, cur := range []*string{nil, &cursor} {
			for _, from := range []*unkeyedCursor{nil, {At: time.Unix(0, 0), Seq: 0}} {
				name := fmt.Sprintf("keyedFirst=%v cursor=%v unkeyedAfter=%v", keyedFirst, cur != nil, from != nil)
				sql := q.Variant(keyedFirst, cur != nil, from != nil)
				var fromAt, fromSeq any
				fromLit := "NULL, NULL"
				if from != nil {
					fromAt, fromSeq, fromLit = from.At, from.Seq, "'epoch', 0"
				}
				var arg any
				if cur != nil {
					arg = *cur
				}
				// As a plain query (custom plan) and prepared (generic plan, as the
				// relay runs it).
				for _, generic := range []bool{false, true} {
					tx, err := db.BeginTx(context.Background(), nil)
					if err != nil {
						t.Fatal(err)
					}
					// In the claim's transaction, with its settings.
					if _, err := tx.Exec(outboxdb.ClaimSettings(time.Minute)); err != nil {
						t.Fatal(err)
					}
					var raw []byte
					if !generic {
						err = tx.QueryRow(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+sql, batch, arg, 4*batch+16, DefaultBatchBytes, fromAt, fromSeq).Scan(&raw)
					} else {
						cursorLit := "NULL"
						if cur != nil {
							cursorLit = "'" + *cur + "'"
						}
						if _, err := tx.Exec(`PREPARE claim_plan (int, text, int, bigint, timestamptz, bigint) AS ` + sql); err != nil {
							t.Fatal(err)
						}
						err = tx.QueryRow(fmt.Sprintf(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_plan(%d, %s, %d, %d, %s)`, batch, cursorLit, 4*batch+16, DefaultBatchBytes, fromLit)).Scan(&raw)
					}
					if err != nil {
						t.Fatalf("%s: explain: %v", name, err)
					}
					_ = tx.Rollback()
					if generic {
						if _, err := db.Exec(`DEALLOCATE ALL`); err != nil {
							t.Fatal(err)
						}
					}
					var plans []struct {
						Plan          testenv.PlanNode `json:"Plan"`
						ExecutionTime float64          `json:"Execution Time"`
					}
					if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
						t.Fatalf("%s: cannot read the plan: %v", name, err)
					}
					var indexes []string
					plans[0].Plan.Walk(func(n testenv.PlanNode) {
						if n.RelationName == "outbox" && strings.Contains(n.NodeType, "Seq Scan") {
							t.Errorf("%s generic=%v: the claim scans the whole table (%s)", name, generic, n.NodeType)
						}
						if n.IndexName != "" {
							indexes = append(indexes, n.IndexName)
						}
					})
					// Buffers, not time: what the claim reads does not depend on how busy
					// the machine is (measured: 516 to 9,179 buffers for 500 rows).
					buffers := plans[0].Plan.Buffers()
					t.Logf("%s generic=%v: %.1f ms, %d buffers, indexes %v", name, generic, plans[0].ExecutionTime, buffers, indexes)
					if limit := int64(maxClaimBuffersPerRow * batch); buffers > limit {
						t.Errorf("%s generic=%v: the claim read %d buffers for %d rows on a 100,000-row backlog, more than %d", name, generic, buffers, batch, limit)
					}
				}

				// The rows it takes are runs: each key's rows from its head on, with no
				// live or dead row of the key before them left out.
				tx, err := db.BeginTx(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				c, err := q.claim(context.Background(), pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop()), tx, claimConfig(batch), keyedFirst, cur, 4*batch+16, from)
				if err != nil {
					t.Fatal(err)
				}
				if len(c.rows) != batch {
					t.Errorf("%s: claimed %d rows, want %d", name, len(c.rows), batch)
				}
				var keyedIDs []string
				for _, rw := range c.rows {
					if rw.keyed {
						keyedIDs = append(keyedIDs, rw.id)
					}
				}
				var behind int
				if err := tx.QueryRow(`SELECT count(*) FROM outbox o WHERE o.id = ANY($1::uuid[])
				AND EXISTS (SELECT 1 FROM outbox p WHERE p.ordering_key = o.ordering_key AND p.seq < o.seq
					AND p.id <> ALL($1::uuid[]))`,
					pq.Array(keyedIDs)).Scan(&behind); err != nil {
					t.Fatal(err)
				}
				if behind != 0 {
					t.Errorf("%s: %d claimed rows come after a row of their key that the claim left out", name, behind)
				}
				_ = tx.Rollback()
			}
		}
	}
}

// Claims in flight at once take different rows, and never rows of the same key: a key's
// rows are held by one batch at a time, even when that batch took only part of them.
func TestConcurrentClaimsTakeDisjointRows(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	// 200 unkeyed rows and 5 keys of 40 rows each.
	if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		SELECT 'x', 'k', '\x00', CASE WHEN i % 2 = 0 THEN 'key-' || (i % 10) END FROM generate_series(1, 400) i`); err != nil {
		t.Fatal(err)
	}
	q := newQueries(table)
	st := pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop())
	defer st.Close()
	ctx := context.Background()
	taken := map[string]bool{}
	holder := map[string]int{} // key → the claim that holds it
	for i, claim := range []struct {
		batch      int
		keyedFirst bool
	}{{50, true}, {50, false}, {50, true}, {500, true}} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		c, err := q.claim(ctx, st, tx, claimConfig(claim.batch), claim.keyedFirst, nil, 4*claim.batch+16, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.rows) == 0 {
			t.Fatalf("claim %d took nothing", i)
		}
		for _, rw := range c.rows {
			if taken[rw.id] {
				t.Fatalf("claim %d took row %s that another open claim holds", i, rw.id)
			}
			taken[rw.id] = true
			if !rw.keyed {
				continue
			}
			if h, ok := holder[rw.orderingKey]; ok && h != i {
				t.Fatalf("claim %d took row %s of key %s, whose head claim %d holds", i, rw.id, rw.orderingKey, h)
			}
			holder[rw.orderingKey] = i
		}
	}
	if len(holder) != 5 {
		t.Errorf("the claims took rows of %d keys, want all 5", len(holder))
	}
}

// When the server forgets the prepared statements (as a connection pooler without
// prepared-statement support does), the relay falls back to plain queries.
func TestClaimFallsBackToPlainQueries(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	db.SetMaxOpenConns(1) // one connection: the one whose statements are dropped
	table := pg.MustParseTable("outbox")
	migrate(t, db, table)
	if _, err := db.Exec(`INSERT INTO outbox (exchange, routing_key, payload) VALUES ('x', 'k', 'p')`); err != nil {
		t.Fatal(err)
	}
	q := newQueries(table)
	st := pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop())
	defer st.Close()
	ctx := context.Background()
	st.Prepare(ctx, q.hot()...)
	if !st.Ready(q.hot()...) {
		t.Fatal("statements not prepared")
	}
	claim := func() (claimed, error) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		return q.claim(ctx, st, tx, claimConfig(10), true, nil, 56, nil)
	}
	if c, err := claim(); err != nil || len(c.rows) != 1 {
		t.Fatalf("prepared claim: %d rows, %v", len(c.rows), err)
	}
	if _, err := db.Exec(`DEALLOCATE ALL`); err != nil {
		t.Fatal(err)
	}
	if _, err := claim(); err == nil {
		t.Fatal("a claim with a forgotten prepared statement succeeded; the test proves nothing")
	}
	if st.Prepared() {
		t.Fatal("prepared statements still in use after the server forgot them")
	}
	if c, err := claim(); err != nil || len(c.rows) != 1 {
		t.Fatalf("plain claim: %d rows, %v", len(c.rows), err)
	}
}

// The relay's claim keeps its generic plan for as long as the session lives and the
// table's statistics stay (a statistics update replans it). A plan made while the
// table was empty, as at a relay's start before the first rows, still serves a large
// backlog: every variant reads only index entries of the rows it takes.
func TestClaimPlanMadeOnEmptyTableServesLargeBacklog(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	testenv.Exec(t, db, `ANALYZE outbox`)
	ctx := context.Background()
	conn, err := db.Conn(ctx) // the session that holds the plans
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	q := newQueries(table)
	const batch = 500
	type variant struct {
		name string
		sql  string
		args string
	}
	var variants []variant
	for kf := range 2 {
		for ac := range 2 {
			for ua := range 2 {
				args := fmt.Sprintf("%d, NULL, %d, %d, NULL, NULL", batch, 4*batch+16, DefaultBatchBytes)
				if ac == 1 {
					args = fmt.Sprintf("%d, 'deep-5', %d, %d, NULL, NULL", batch, 4*batch+16, DefaultBatchBytes)
				}
				if ua == 1 {
					args = strings.TrimSuffix(args, "NULL, NULL") + "'epoch', 0"
				}
				variants = append(variants, variant{fmt.Sprintf("keyedFirst=%d cursor=%d unkeyedAfter=%d", kf, ac, ua),
					q.Variant(kf == 1, ac == 1, ua == 1), args})
			}
		}
	}
	run := func(stmt string) []byte {
		t.Helper()
		return testenv.Explain(t, conn, outboxdb.ClaimSettings(time.Minute), stmt)
	}
	for i, v := range variants {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PREPARE claim_%d (int, text, int, bigint, timestamptz, bigint) AS %s`, i, v.sql)); err != nil {
			t.Fatal(err)
		}
		run(fmt.Sprintf(`EXPLAIN (FORMAT JSON) EXECUTE claim_%d(%s)`, i, v.args)) // planned on the empty table
	}

	for _, fill := range []string{
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT 'x', 'k', '\x00', 'deep-' || (i % 20) FROM generate_series(1, 40000) i`,
		`INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		 SELECT 'x', 'k', '\x00', 'single-' || i FROM generate_series(1, 5000) i`,
		`INSERT INTO outbox (exchange, routing_key, payload) SELECT 'x', 'k', '\x00' FROM generate_series(1, 40000) i`,
	} {
		testenv.Exec(t, db, fill)
	}
	for i, v := range variants {
		plan := testenv.ReadPlan(t, run(fmt.Sprintf(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_%d(%s)`, i, v.args)))
		plan.Walk(func(n testenv.PlanNode) {
			if n.RelationName == "outbox" && strings.Contains(n.NodeType, "Seq Scan") {
				t.Errorf("%s: the claim scans the whole table (%s)", v.name, n.NodeType)
			}
		})
		buffers := plan.Buffers()
		t.Logf("%s: %d buffers", v.name, buffers)

		if limit := int64(maxClaimBuffersPerRow * batch); buffers > limit {
			t.Errorf("%s: the claim planned on an empty table read %d buffers for %d rows on an 85,000-row backlog, more than %d", v.name, buffers, batch, limit)
		}
	}
}
