package relay

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// migratePartitioned creates the outbox table t partitioned by day.
func migratePartitioned(t *testing.T, db *sql.DB, table pg.Table) {
	t.Helper()
	if err := outbox.MigratePartitioned(context.Background(), db, table.String()); err != nil {
		t.Fatalf("migrate the partitioned outbox: %v", err)
	}
}

// partitions lists the partitions of table, by name.
func partitions(t *testing.T, db *sql.DB, table pg.Table) map[string]bool {
	t.Helper()
	rows, err := db.Query(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)`, table.String())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[n] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dayName is the partition name of the day `days` after the database's today (UTC).
func dayName(t *testing.T, db *sql.DB, days int) string {
	t.Helper()
	var s string
	if err := db.QueryRow(`SELECT 'outbox_p' || to_char((now() AT TIME ZONE 'UTC')::date + $1::int, 'YYYYMMDD')`, days).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// A relay on a table partitioned by day makes today's partition and the next days'
// at start, publishes the rows in order per key, and keeps them, marked published.
func TestPartitionedRelayPublishesInOrderAndKeeps(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	table := pg.MustParseTable("outbox")
	migratePartitioned(t, db, table)
	url := testenv.AMQPURL(t)
	exchange, queue := topology(t, url, "rk")
	s := consume(t, url, queue)

	cfg := testConfig(table)
	cfg.Partitions = "daily"
	r := startRelay(t, db, dsn, url, cfg)
	if r.cfg.Retention != DefaultPartitionedRetention {
		t.Errorf("Retention = %v, want the default %v", r.cfg.Retention, DefaultPartitionedRetention)
	}
	testenv.Eventually(t, 10*time.Second, "partitions of today and the next days", func() bool {
		ps := partitions(t, db, table)
		for i := range outboxdb.PartitionsAhead + 1 {
			if !ps[dayName(t, db, i)] {
				return false
			}
		}
		return ps["outbox_default"]
	})
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		SELECT $1, 'rk', convert_to('keyed ' || i, 'UTF8'), 'k' || (i % 4) FROM generate_series(1, 200) i`, exchange)
	backlog(t, db, table, exchange, "rk", 50)
	s.waitDistinct(t, 250, 30*time.Second)
	testenv.Eventually(t, 10*time.Second, "every row kept, marked published", func() bool {
		return outboxCount(t, db, table, `published_at IS NOT NULL`) == 250
	})
	if n := testenv.Count(t, db, `SELECT count(*) FROM `+dayName(t, db, 0)); n != 250 {
		t.Errorf("%d rows in today's partition, want 250", n)
	}
	last := map[string]int64{}
	for _, m := range s.messages() {
		if s.count(m.MessageId) != 1 {
			t.Fatalf("message %s published %d times", m.MessageId, s.count(m.MessageId))
		}
		key, _ := m.Headers["x-ordering-key"].(string)
		seq, _ := m.Headers["x-outbox-seq"].(int64)
		if key == "" {
			continue
		}
		if seq <= last[key] {
			t.Errorf("key %s: seq %d after %d", key, seq, last[key])
		}
		last[key] = seq
	}
	if len(last) != 4 {
		t.Errorf("%d keys seen, want 4", len(last))
	}

	// Replay makes kept rows of a partitioned table go out again.
	ctx := context.Background()
	if n, err := outboxdb.Replay(ctx, db, table, outboxdb.Since{Ago: time.Hour}, false); err != nil || n != 250 {
		t.Fatalf("Replay = %d, %v; want 250", n, err)
	}
	testenv.Eventually(t, 20*time.Second, "replayed rows published again", func() bool { return s.total() == 500 })
}

// A partition past the window is dropped when all its rows were published before it,
// kept while it holds an unpublished row; a day whose rows sit in the default
// partition gets no partition of its own.
func TestPartitionMaintenance(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	table := pg.MustParseTable("outbox")
	migratePartitioned(t, db, table)
	old, kept := dayName(t, db, -10), dayName(t, db, -9)
	var today time.Time
	if err := db.QueryRow(`SELECT (now() AT TIME ZONE 'UTC')::date`).Scan(&today); err != nil {
		t.Fatal(err)
	}
	for i, p := range []string{old, kept} {
		day := today.AddDate(0, 0, i-10)
		testenv.Exec(t, db, `CREATE TABLE `+p+` PARTITION OF outbox FOR VALUES FROM ('`+day.Format("2006-01-02")+` 00:00+00') TO ('`+day.AddDate(0, 0, 1).Format("2006-01-02")+` 00:00+00')`)
	}
	testenv.Exec(t, db, `INSERT INTO outbox (payload, created_at, published_at)
		SELECT 'x', (now() AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC' - interval '10 days' + i * interval '1 minute', now() - interval '9 days'
		FROM generate_series(1, 5) i`)
	testenv.Exec(t, db, `INSERT INTO outbox (payload, created_at, published_at)
		SELECT 'x', (now() AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC' - interval '9 days' + i * interval '1 minute', CASE WHEN i > 1 THEN now() - interval '8 days' END
		FROM generate_series(1, 5) i`)
	// A row two days ahead, before its partition exists: it goes to the default one.
	testenv.Exec(t, db, `INSERT INTO outbox (payload, created_at) VALUES ('x', (now() AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC' + interval '2 days 1 hour')`)
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox_default`); n != 1 {
		t.Fatalf("%d rows in the default partition, want 1", n)
	}

	m, err := outboxdb.MaintainPartitions(context.Background(), db, table, 72*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ps := partitions(t, db, table)
	if ps[old] || len(m.Dropped) != 1 {
		t.Errorf("partition %s with only published rows past the window not dropped: %+v", old, m)
	}
	if !ps[kept] || m.Kept[kept] == "" {
		t.Errorf("partition %s with an unpublished row not kept with a reason: %+v", kept, m)
	}
	for _, i := range []int{0, 1, 3} {
		if !ps[dayName(t, db, i)] {
			t.Errorf("partition %s not created ahead: %+v", dayName(t, db, i), m)
		}
	}
	if ps[dayName(t, db, 2)] || m.Skipped[dayName(t, db, 2)] == "" {
		t.Errorf("partition %s created over rows in the default partition, or skipped silently: %+v", dayName(t, db, 2), m)
	}

	// Once the row is published (before the window), the partition goes.
	testenv.Exec(t, db, `UPDATE outbox SET published_at = now() - interval '8 days' WHERE published_at IS NULL AND created_at < now() - interval '5 days'`)
	m, err = outboxdb.MaintainPartitions(context.Background(), db, table, 72*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if partitions(t, db, table)[kept] || len(m.Dropped) != 1 || len(m.Created) != 0 {
		t.Errorf("second round: %+v; want %s dropped and nothing created", m, kept)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox`); n != 1 {
		t.Errorf("%d rows left, want the default partition's 1", n)
	}
}

// A relay refuses a table of the other layout than its configuration says.
func TestRelayRefusesOtherLayout(t *testing.T) {
	t.Parallel()
	plain, dsn := testenv.DB(t)
	migrate(t, plain, pg.MustParseTable("outbox"))
	url := testenv.AMQPURL(t)
	cfg := testConfig(pg.MustParseTable("outbox"))
	cfg.Partitions = "daily"
	cfg.AMQPURLs = []string{url}
	cfg.ListenDatabaseURL = dsn
	if err := outbox.MigratePartitioned(context.Background(), plain, "outbox"); err == nil || !errors.As(err, new(*outboxdb.LayoutError)) {
		t.Errorf("MigratePartitioned over a plain table = %v, want a LayoutError", err)
	}
	r, err := New(plain, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Partitions" {
		t.Errorf("Run on a plain table with Partitions daily = %v, want a ConfigError for Partitions", err)
	}
}

// Relays maintaining one table at once take turns: no error, each partition made once.
func TestPartitionMaintenanceConcurrent(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	table := pg.MustParseTable("app.outbox")
	if err := outbox.MigratePartitioned(context.Background(), db, table.String()); err != nil {
		t.Fatal(err)
	}
	const relays = 4
	results := make(chan outboxdb.Maintenance, relays)
	errs := make(chan error, relays)
	for range relays {
		go func() {
			m, err := outboxdb.MaintainPartitions(context.Background(), db, table, time.Hour)
			results <- m
			errs <- err
		}()
	}
	created := 0
	for range relays {
		if err := <-errs; err != nil {
			t.Errorf("MaintainPartitions: %v", err)
		}
		created += len((<-results).Created)
	}
	// A relay that found another one at work made nothing this round; the next round
	// of any of them makes what is left.
	if _, err := outboxdb.MaintainPartitions(context.Background(), db, table, time.Hour); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM pg_inherits WHERE inhparent = 'app.outbox'::regclass`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != outboxdb.PartitionsAhead+2 || created > outboxdb.PartitionsAhead+1 {
		t.Errorf("%d partitions (want %d with the default), %d creations reported", n, outboxdb.PartitionsAhead+2, created)
	}
}
