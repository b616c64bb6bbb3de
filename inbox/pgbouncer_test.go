package inbox

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// The consumer stores through PgBouncer, in transaction and in session mode, every
// message once, duplicates included, with its insert prepared only where that is
// safe; and with preparing forced on behind a pooler that does not keep prepared
// statements, it falls back to plain inserts and still stores each message once.
func TestConsumerThroughPgBouncer(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, mode string
		prepare    string
	}{
		{"transaction", testenv.PoolTransaction, "auto"},
		{"session", testenv.PoolSession, "auto"},
		{"transaction forced prepare", testenv.PoolTransaction, "on"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			direct := testenv.DatabaseURL(t)
			pooled := testenv.StartPgBouncer(t, direct, c.mode).URL(direct) + "&binary_parameters=yes"
			db, err := sql.Open("postgres", pooled)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			table := "inbox"
			if err := Migrate(context.Background(), db, table); err != nil {
				t.Fatalf("migrate through pgbouncer: %v", err)
			}
			url, conn, queue := testQueue(t, "inbox_pgbouncer")
			r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: table, BatchSize: 16, Workers: 4, Prepare: c.prepare})
			const n = 1000
			msgs := numbered("m-", n)
			publish(t, conn, queue, msgs...)
			publish(t, conn, queue, msgs[:200]...) // redelivered copies
			testenv.Eventually(t, 60*time.Second, "every delivery to be handled", func() bool {
				return r.stored()+r.duplicates() == n+200 && depth(t, conn, queue) == 0
			})
			if got := countRows(t, db, `SELECT count(*) FROM inbox WHERE consumer = $1`, queue); got != n {
				t.Errorf("%s: %d inbox rows, want %d", c.name, got, n)
			}
			if r.stored() != n || r.duplicates() != 200 {
				t.Errorf("%s: stored %d, duplicates %d; want %d, 200", c.name, r.stored(), r.duplicates(), n)
			}
			prepared := r.c.stmts.Prepared()
			if c.prepare == "auto" && prepared != (c.mode == testenv.PoolSession) {
				t.Errorf("%s: insert prepared = %v", c.name, prepared)
			}
		})
	}
}
