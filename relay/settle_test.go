package relay

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// Settling a batch reads the confirmed rows' heap pages and no index: by primary key,
// random UUIDs put every row of a batch on its own index page, which a large table
// does not keep in shared buffers (on 1,000,000 rows, 500 rows took 28 to 69 ms by id
// with the index out of the cache, 0.4 to 0.6 ms by ctid).
func TestSettleFindsRowsWithoutTheIndex(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) SELECT '', 'k', '\x00' FROM generate_series(1, 20000)`)
	testenv.Exec(t, db, `VACUUM ANALYZE outbox`)
	c, tx := claimOnce(t, db, claimConfig(DefaultBatchSize), false)
	if len(c.rows) != DefaultBatchSize {
		t.Fatalf("claimed %d rows, want %d", len(c.rows), DefaultBatchSize)
	}
	q := newQueries(table)
	tids := make([]string, len(c.rows))
	for i, rw := range c.rows {
		tids[i] = rw.tid
	}
	// The statement Settle runs, explained in the claim's transaction, then rolled
	// back to before it.
	if _, err := tx.Exec(`SAVEPOINT explain`); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := tx.QueryRow(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+q.Remove(), pq.Array(tids), c.rel).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`ROLLBACK TO SAVEPOINT explain`); err != nil {
		t.Fatal(err)
	}
	plan := testenv.ReadPlan(t, raw)
	var indexes []string
	plan.Walk(func(n testenv.PlanNode) {
		if n.IndexName != "" {
			indexes = append(indexes, n.IndexName)
		}
	})
	buffers := plan.Buffers()
	t.Logf("settling %d rows read %d buffers, indexes %v", len(c.rows), buffers, indexes)
	if len(indexes) > 0 {
		t.Errorf("settling reads index %v", indexes)
	}
	// A row's heap page to find it and to delete it: 2.6 to 3 buffers per row here
	// (by id, on 1,000,000 rows: 4, three of them index pages that a large table's
	// cache does not hold).
	if limit := int64(4 * len(c.rows)); buffers > limit {
		t.Errorf("settling %d rows read %d buffers, more than %d", len(c.rows), buffers, limit)
	}

	// And Settle removes exactly the rows given.
	if _, _, err := q.Settle(context.Background(), pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop()), tx, refs(c, c.rows), nil, 10); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := tx.QueryRow(`SELECT count(*) FROM outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 20000-DefaultBatchSize {
		t.Errorf("%d rows left, want %d", left, 20000-DefaultBatchSize)
	}
}

// A ctid names a row within one table only: a row of a child table (or of a
// partition) can share its ctid with another row of the table itself. Settling a
// confirmed row of each touches neither row at the other's ctid: rows the table
// itself holds are found by ctid, the others by id.
func TestSettleTouchesOnlyTheConfirmedRowsOfAnotherTable(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	testenv.Exec(t, db, `CREATE TABLE outbox_child () INHERITS (outbox)`)
	// Rows 1-3 in the table itself, 4-6 in the child: the same ctids, (0,1) to (0,3).
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) SELECT '', 'k', convert_to(i::text, 'UTF8') FROM generate_series(1, 3) i`)
	testenv.Exec(t, db, `INSERT INTO outbox_child (exchange, routing_key, payload, seq) SELECT '', 'k', convert_to(i::text, 'UTF8'), i FROM generate_series(4, 6) i`)

	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			q := newQueries(table)
			if keep {
				q.KeepPublished()
			}
			tx, err := db.BeginTx(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback() }()
			if _, err := tx.Exec(outboxdb.ClaimSettings(time.Minute)); err != nil {
				t.Fatal(err)
			}
			c, err := q.claim(context.Background(), pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop()), tx, claimConfig(DefaultBatchSize), false, nil, 10, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.rows) != 6 {
				t.Fatalf("claimed %d rows, want 6", len(c.rows))
			}
			// Confirm rows 1 and 5: one of each table, at different ctids from
			// each other, each sharing its ctid with an unconfirmed row of the
			// other table.
			var confirmed []row
			for _, rw := range c.rows {
				if p := string(rw.payload); p == "1" || p == "5" {
					confirmed = append(confirmed, rw)
				}
			}
			lat, _, err := q.Settle(context.Background(), pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop()), tx, refs(c, confirmed), nil, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(lat) != 2 {
				t.Errorf("settled %d rows, want 2", len(lat))
			}
			cond := `true`
			if keep {
				cond = `published_at IS NULL`
			}
			var left []string
			if err := tx.QueryRow(`SELECT array_agg(convert_from(payload, 'UTF8') ORDER BY seq) FROM outbox WHERE ` + cond).Scan(pq.Array(&left)); err != nil {
				t.Fatal(err)
			}
			if want := []string{"2", "3", "4", "6"}; !slices.Equal(left, want) {
				t.Errorf("rows left unsettled: %v, want %v", left, want)
			}
		})
	}
}

// A confirmed row that is no longer where the claim found it (updated within the
// batch: nothing does so today) is settled by id rather than left to be published
// again and again.
func TestSettleFindsMovedRowsByID(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) SELECT '', 'k', '\x00' FROM generate_series(1, 10)`)
	c, tx := claimOnce(t, db, claimConfig(DefaultBatchSize), false)
	if len(c.rows) != 10 {
		t.Fatalf("claimed %d rows, want 10", len(c.rows))
	}
	// A new version of the first row, at another ctid.
	if _, err := tx.Exec(`UPDATE outbox SET attempts = attempts WHERE id = $1`, c.rows[0].id); err != nil {
		t.Fatal(err)
	}
	q := newQueries(table)
	lat, _, err := q.Settle(context.Background(), pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop()), tx, refs(c, c.rows), nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 10 {
		t.Errorf("settled %d rows, want 10", len(lat))
	}
	var left int
	if err := tx.QueryRow(`SELECT count(*) FROM outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left, want none", left)
	}
}
