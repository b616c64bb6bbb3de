package relay

import (
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// pooledSetup migrates a fresh database and starts a private PgBouncer in front of it;
// db and dsn go through PgBouncer, with lib/pq's binary_parameters=yes as the sidecar
// sets it.
func pooledSetup(t *testing.T, mode string) (db *sql.DB, dsn string, table pg.Table, url, exchange string, s *sink) {
	t.Helper()
	direct := testenv.DatabaseURL(t)
	dsn = testenv.StartPgBouncer(t, direct, mode).URL(direct) + "&binary_parameters=yes"
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	table = pg.MustParseTable("outbox")
	migrate(t, db, table)
	url = testenv.AMQPURL(t)
	exchange, queue := topology(t, url, "k")
	return db, dsn, table, url, exchange, consume(t, url, queue)
}

// writeConcurrently commits n rows from four writers, one row per transaction, some
// with an ordering key, and returns their ids.
func writeConcurrently(t *testing.T, db *sql.DB, table pg.Table, exchange string, n int) []string {
	t.Helper()
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for w := range 4 {
		wg.Go(func() {
			for i := range n / 4 {
				extra := map[string]any{}
				if i%3 == 0 {
					extra["ordering_key"] = fmt.Sprintf("key-%d", i%7)
				}
				id := insertRow(t, db, table, exchange, "k", fmt.Sprintf("w%d-%d", w, i), extra)
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ids
}

// The relay through PgBouncer, its pool and its LISTEN connection both pooled: every
// committed row arrives. In transaction mode it finds that notifications do not
// arrive and polls, and prepares nothing; in session mode both work as directly.
func TestRelayThroughPgBouncer(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{testenv.PoolTransaction, testenv.PoolSession} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			db, dsn, table, url, exchange, s := pooledSetup(t, mode)
			cfg := testConfig(table)
			cfg.Workers, cfg.BatchSize = 4, 50
			r := startRelay(t, db, dsn, url, cfg)
			ids := writeConcurrently(t, db, table, exchange, 1000)
			s.waitDistinct(t, len(ids), 60*time.Second)
			for _, id := range ids {
				if s.count(id) == 0 {
					t.Fatalf("message %s was lost", id)
				}
			}
			testenv.Eventually(t, 10*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
			transaction := mode == testenv.PoolTransaction
			testenv.Eventually(t, 10*time.Second, "the wake-up mode to settle", func() bool { return r.WakeupsPolled() == transaction })
			if got := r.stmts.Prepared(); got == transaction {
				t.Errorf("%s mode: statements prepared = %v", mode, got)
			}
			t.Logf("%s mode: %d rows, %d deliveries, %d claims", mode, len(ids), s.total(), r.claims.Load())
		})
	}
}

// Forced prepared statements (SIDEBOX_DATABASE_PREPARE=on) behind a pooler that does
// not keep them (PgBouncer 1.18 in transaction mode) lose nothing: a claim whose
// statement is missing is retried at once with a plain query.
func TestForcedPrepareBehindTransactionPooler(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := pooledSetup(t, testenv.PoolTransaction)
	cfg := testConfig(table)
	cfg.Workers, cfg.BatchSize, cfg.Prepare = 4, 20, string(pg.PrepareOn)
	r := startRelay(t, db, dsn, url, cfg)
	ids := writeConcurrently(t, db, table, exchange, 800)
	s.waitDistinct(t, len(ids), 60*time.Second)
	testenv.Eventually(t, 10*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	t.Logf("prepared statements still in use: %v; %d rows, %d deliveries", r.stmts.Prepared(), len(ids), s.total())
}

// Wake-ups behind a transaction pooler: with a poll interval of 30 s, the relay that
// has found LISTEN unusable still delivers single messages long before the next poll
// while rows keep coming (adaptive polling), and one whose LISTEN connection goes
// directly to the database is woken by notifications.
func TestWakeupsBehindTransactionPooler(t *testing.T) {
	t.Parallel()
	for _, listen := range []string{"pooled", "direct"} {
		t.Run(listen, func(t *testing.T) {
			t.Parallel()
			direct := testenv.DatabaseURL(t)
			pooled := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction).URL(direct) + "&binary_parameters=yes"
			db, err := sql.Open("postgres", pooled)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			table := pg.MustParseTable("outbox")
			migrate(t, db, table)
			url := testenv.AMQPURL(t)
			exchange, queue := topology(t, url, "k")
			s := consume(t, url, queue)
			cfg := testConfig(table)
			cfg.PollInterval = 30 * time.Second
			listenDSN := pooled
			if listen == "direct" {
				listenDSN = direct
			}
			r := startRelay(t, db, listenDSN, url, cfg)
			testenv.Eventually(t, 10*time.Second, "the LISTEN probe's verdict", func() bool {
				if listen == "pooled" {
					return r.probeFailed.Load() && r.WakeupsPolled()
				}
				return !r.WakeupsPolled() && r.idle.Load()
			})
			for i := 1; i <= 20; i++ {
				insertRow(t, db, table, exchange, "k", "single", nil)
				// Far below the poll interval: something other than the poll woke it.
				s.waitDistinct(t, i, 10*time.Second)
			}
		})
	}
}
