package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/testenv"
)

// The processor's claim is a prepared statement with a generic plan, planned once per
// connection, where that is safe: directly and through a session pooler, not through a
// transaction pooler (PgBouncer in transaction mode). Forced on behind a transaction
// pooler it falls back to plain queries once a prepared claim goes missing. Every
// message takes effect once in each case.
func TestProcessorPreparesItsClaimWhereSafe(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, mode, prepare string
		prepared            bool // in auto mode
	}{
		{"direct", "", "auto", true},
		{"session pooled", testenv.PoolSession, "auto", true},
		{"transaction pooled", testenv.PoolTransaction, "auto", false},
		{"transaction pooled, forced on", testenv.PoolTransaction, "on", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			direct, url, _ := migrated(t, "inbox")
			effectsTable(t, direct)
			db := direct
			if c.mode != "" {
				pooled, err := sql.Open("postgres", testenv.StartPgBouncer(t, url, c.mode).URL(url)+"&binary_parameters=yes")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = pooled.Close() })
				db = pooled
			}
			var ids []string
			for i := range 40 {
				ids = append(ids, fmt.Sprintf("m%02d:%s", i, []string{"a", "b", "c", ""}[i%4]))
			}
			storeRows(t, direct, "svc", ids...)
			var claims []string
			var generic, custom int
			p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 5, Prepare: c.prepare},
				func(ctx context.Context, tx *sql.Tx, msg Message) error {
					if c.mode == "" { // the plans of this connection's prepared claims
						if err := tx.QueryRowContext(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
							FROM pg_prepared_statements WHERE statement = ANY($1)`, pq.StringArray(claims)).Scan(&generic, &custom); err != nil {
							return err
						}
					}
					_, err := tx.ExecContext(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, msg.MessageID)
					return err
				})
			claims = p.sql.Claims()
			drain(t, db, p)
			if n := countRows(t, direct, `SELECT count(*) FROM effects`); n != len(ids) {
				t.Errorf("%d effects, want %d", n, len(ids))
			}
			if n := countRows(t, direct, `SELECT count(*) FROM inbox WHERE processed_at IS NULL`); n != 0 {
				t.Errorf("%d rows left unprocessed", n)
			}
			if got := p.stmts.Prepared(); c.prepare == "auto" && got != c.prepared {
				t.Errorf("claim prepared = %v, want %v", got, c.prepared)
			}
			if c.mode == "" && (generic == 0 || custom != 0) {
				t.Errorf("the prepared claims ran with %d generic and %d custom plans, want generic plans only", generic, custom)
			}
		})
	}
}

// A claim planned while the table was empty, kept as its backlog grows (the plan of a
// prepared statement lasts until the table's statistics change), still reads only the
// rows it claims and the keys it visits: every variant uses the indexes and never scans
// the table.
func TestProcessorClaimPlanMadeOnEmptyTableServesLargeBacklog(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	// No auto-ANALYZE after the fill: it would plan the claims again, on the full table.
	testenv.Exec(t, db, `ALTER TABLE inbox SET (autovacuum_enabled = false)`)
	testenv.Exec(t, db, `ANALYZE inbox`)
	ctx := context.Background()
	conn, err := db.Conn(ctx) // the session that holds the plans
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	const batch = inboxdb.MaxClaim
	visits := 4*batch + 16
	type variant struct{ name, sql, params, args string }
	var variants []variant
	for i, c := range inboxdb.NewProcessor("inbox", true).Claims() { // [keyedFirst][afterCursor]: 00, 01, 10, 11
		cursor := "NULL"
		if i%2 == 1 {
			cursor = "'deep-05'"
		}
		variants = append(variants, variant{fmt.Sprintf("ordered keyedFirst=%v cursor=%v", i >= 2, i%2 == 1), c,
			"text, int, text, int", fmt.Sprintf("'svc', %d, %s, %d", batch, cursor, visits)})
	}
	for _, c := range inboxdb.NewProcessor("inbox", false).Claims() {
		variants = append(variants, variant{"unordered", c, "text, int", fmt.Sprintf("'svc', %d", batch)})
	}
	run := func(stmt string) []byte {
		t.Helper()
		return testenv.Explain(t, conn, inboxdb.NewProcessor("inbox", true).ClaimSettings(), stmt)
	}
	for i, v := range variants {
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PREPARE claim_%d (%s) AS %s`, i, v.params, v.sql)); err != nil {
			t.Fatal(err)
		}
		run(fmt.Sprintf(`EXPLAIN (FORMAT JSON) EXECUTE claim_%d(%s)`, i, v.args)) // planned on the empty table
	}
	for _, fill := range []string{
		`INSERT INTO inbox (consumer, message_id, ordering_key)
		 SELECT 'svc', 'd' || i, 'deep-' || lpad((i % 20)::text, 2, '0') FROM generate_series(1, 40000) i`,
		`INSERT INTO inbox (consumer, message_id, ordering_key)
		 SELECT 'svc', 's' || i, 'single-' || i FROM generate_series(1, 5000) i`,
		`INSERT INTO inbox (consumer, message_id) SELECT 'svc', 'u' || i FROM generate_series(1, 40000) i`,
		`INSERT INTO inbox (consumer, message_id, ordering_key)
		 SELECT 'other', 'o' || i, 'deep-' || (i % 20) FROM generate_series(1, 20000) i`,
	} {
		testenv.Exec(t, db, fill)
	}
	for i, v := range variants {
		plan := testenv.ReadPlan(t, run(fmt.Sprintf(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_%d(%s)`, i, v.args)))
		name := v.name
		plan.Walk(func(n testenv.PlanNode) {
			if n.RelationName == "inbox" && strings.Contains(n.NodeType, "Seq Scan") {
				t.Errorf("%s: the claim scans the whole table (%s)", name, n.NodeType)
			}
		})
		t.Logf("%s: %d buffers", name, plan.Buffers())
		// The claim visits up to `visits` keys and locks up to `batch` rows, a few index
		// pages each; the backlog is 105,000 rows.
		if limit := int64(8 * (visits + batch)); plan.Buffers() > limit {
			t.Errorf("%s: the claim planned on an empty table read %d buffers on a 105,000-row backlog, more than %d", name, plan.Buffers(), limit)
		}
	}
}

// The handler's statements run with the planner settings the application set on its
// connection, not with those the claim is planned with, also after a failed handler
// was rolled back; JIT stays off for the batch.
func TestProcessorHandlerRunsWithApplicationsPlannerSettings(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	db.SetMaxOpenConns(1) // the session setting below holds on the processor's connection
	testenv.Exec(t, db, `SET enable_incremental_sort = off`)
	storeRows(t, db, "svc", "a:k", "b", "c")
	want := map[string]string{"plan_cache_mode": "auto", "enable_seqscan": "on", "enable_sort": "on",
		"enable_incremental_sort": "off", "jit": "off"}
	got := map[string]string{}
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, Prepare: "on"}, func(ctx context.Context, tx *sql.Tx, msg Message) error {
		for name := range want {
			var v string
			if err := tx.QueryRowContext(ctx, `SELECT current_setting($1)`, name).Scan(&v); err != nil {
				return err
			}
			got[msg.MessageID+" "+name] = v
		}
		if msg.MessageID == "b" {
			return errors.New("fails: rolled back to its savepoint")
		}
		return nil
	})
	if n, err := p.ProcessOnce(context.Background()); n != 3 || err != nil {
		t.Fatalf("ProcessOnce = %d, %v; want 3 rows", n, err)
	}
	for _, id := range []string{"a", "b", "c"} {
		for name, v := range want {
			if got[id+" "+name] != v {
				t.Errorf("message %s: %s = %q in the handler, want %q", id, name, got[id+" "+name], v)
			}
		}
	}
}

// A prepared claim that the connection lost (as behind a pooler that does not keep
// prepared statements) costs nothing: the batch is claimed again at once with a plain
// query, and the processor uses plain queries from then on.
func TestProcessorClaimsAgainWhenItsPreparedClaimIsLost(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	db.SetMaxOpenConns(1)
	storeRows(t, db, "svc", "a", "b")
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", BatchSize: 1, Prepare: "on"}, func(ctx context.Context, tx *sql.Tx, msg Message) error {
		_, err := tx.ExecContext(ctx, `DEALLOCATE ALL`) // the connection forgets the prepared claim
		return err
	})
	for _, id := range []string{"a", "b"} {
		if n, err := p.ProcessOnce(context.Background()); n != 1 || err != nil {
			t.Fatalf("ProcessOnce for %s = %d, %v; want 1 row", id, n, err)
		}
	}
	if p.stmts.Prepared() {
		t.Error("the processor still prepares its claim after the connection lost it")
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NULL`); n != 0 {
		t.Errorf("%d rows left unprocessed", n)
	}
}
