package cli_test

import (
	"database/sql"
	"strings"
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
)

// outboxCatalog describes what the outbox migrations made: columns with their types
// and defaults, indexes, constraints, triggers and partitions, one per line, sorted.
func outboxCatalog(t *testing.T, db *sql.DB) string {
	t.Helper()
	var s string
	if err := db.QueryRow(`SELECT coalesce(string_agg(x, E'\n' ORDER BY x), '') FROM (
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' ' ||
         coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attidentity::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relname LIKE 'outbox%' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL SELECT 'relation ' || relname || ' ' || relkind::text FROM pg_class WHERE relname LIKE 'outbox%' AND relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE tablename LIKE 'outbox%'
  UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid::regclass::text LIKE 'outbox%'
  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'outbox_wakeup'
  UNION ALL SELECT 'partition ' || relname || ' ' || pg_get_expr(relpartbound, oid) FROM pg_class WHERE relispartition AND relname LIKE 'outbox%'
  UNION ALL SELECT 'function ' || pg_get_functiondef(oid) FROM pg_proc WHERE proname = 'outbox_wakeup') s(x)`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// SIDEBOX_OUTBOX_PARTITIONS=daily: migrate up makes the outbox partitioned by day, the
// same as the printed SQL makes; status, replay and the migrate-down guard work on it;
// a table of the other layout is refused, both ways.
func TestMigratePartitioned(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn), "SIDEBOX_OUTBOX_PARTITIONS=daily"}
	out := mustRun(t, vars, []string{"outbox table outbox: applied 0001_create_partitioned_outbox", "inbox table inbox: applied 0001_create_inbox"}, "migrate", "up")
	if strings.Contains(out, "0002_retrying_index") {
		t.Errorf("migrate up applied the plain table's migrations too:\n%s", out)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname = 'outbox' AND relkind = 'p'`); n != 1 {
		t.Fatalf("outbox is not a partitioned table")
	}
	mustRun(t, vars, []string{"outbox table outbox: up to date"}, "migrate", "up")

	// The printed SQL, applied by another tool, makes the same; up then records it.
	printed := run(t, []string{"SIDEBOX_OUTBOX_PARTITIONS=daily"}, "migrate", "print")
	if printed.code != 0 || !strings.Contains(printed.stdout, "-- outbox/migrations/partitioned/0001_create_partitioned_outbox.up.sql") ||
		strings.Contains(printed.stdout, "0002_retrying_index") {
		t.Fatalf("migrate print: %s", printed)
	}
	other, otherDSN := testenv.DB(t)
	psql(t, otherDSN, printed.stdout)
	if got, want := outboxCatalog(t, other), outboxCatalog(t, db); got != want {
		t.Errorf("the printed SQL made\n%s\nmigrate up made\n%s", got, want)
	}
	mustRun(t, []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, otherDSN), "SIDEBOX_OUTBOX_PARTITIONS=daily"},
		[]string{"outbox table outbox: 0001_create_partitioned_outbox was there already (applied by another tool); recorded"}, "migrate", "up")
	if r := run(t, []string{"SIDEBOX_OUTBOX_PARTITIONS=weekly"}, "migrate", "print"); r.code != 2 || !strings.Contains(r.stderr, "SIDEBOX_OUTBOX_PARTITIONS: must be none or daily") {
		t.Errorf("migrate print with a bad layout: %s", r)
	}

	// Rows land in the default partition until a relay makes the day's: status, replay
	// and the guard see them through the partitioned table.
	testenv.Exec(t, db, `INSERT INTO outbox (payload) VALUES ('pending')`)
	testenv.Exec(t, db, `INSERT INTO outbox (payload, attempts, dead_at, last_error) VALUES ('dead', 3, now(), 'nack')`)
	testenv.Exec(t, db, `INSERT INTO outbox (payload, published_at) VALUES ('a', now() - interval '10 minutes'), ('b', now())`)
	rep, raw := status(t, vars)
	if rep.Outbox == nil || rep.Outbox.Pending != 1 || rep.Outbox.Dead != 1 {
		t.Errorf("status --json on the partitioned outbox = %s; want 1 pending, 1 dead", raw)
	}
	mustRun(t, vars, []string{"republishing 2 rows"}, "replay", "--since", "1h")
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL`); n != 3 {
		t.Errorf("%d rows pending after the replay, want 3", n)
	}
	mustRun(t, vars, []string{"nack"}, "dead", "list")
	mustRun(t, vars, []string{"retried 1 dead rows"}, "dead", "retry", "--all")
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL`); n != 4 {
		t.Errorf("%d rows pending after the dead retry, want 4", n)
	}
	if r := run(t, vars, "migrate", "down"); r.code != 1 || !strings.Contains(r.stderr, "outbox holds 4 unpublished rows") {
		t.Errorf("migrate down with unpublished rows: %s", r)
	}

	// The other layout is refused, both ways, before anything changes.
	plainVars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}
	if r := run(t, plainVars, "migrate", "up"); r.code != 1 || !strings.Contains(r.stderr, "outbox table outbox is partitioned by day, but SIDEBOX_OUTBOX_PARTITIONS is none") {
		t.Errorf("migrate up without partitions over a partitioned table: %s", r)
	}
	plain, plainDSN := testenv.DB(t)
	plainVars = []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, plainDSN)}
	mustRun(t, plainVars, nil, "migrate", "up")
	if r := run(t, append(plainVars, "SIDEBOX_OUTBOX_PARTITIONS=daily"), "migrate", "up"); r.code != 1 || !strings.Contains(r.stderr, "outbox table outbox is a plain table, but SIDEBOX_OUTBOX_PARTITIONS is daily") {
		t.Errorf("migrate up with partitions over a plain table: %s", r)
	}
	// So is a relay, with exit code 2.
	r := run(t, append(plainVars, "SIDEBOX_OUTBOX_PARTITIONS=daily", "SIDEBOX_AMQP_URL="+testenv.AMQPURL(t), "SIDEBOX_HTTP_ADDR=127.0.0.1:0"), "relay")
	if r.code != 2 || !strings.Contains(r.stderr, "SIDEBOX_OUTBOX_PARTITIONS: outbox table outbox is a plain table") {
		t.Errorf("relay with partitions over a plain table: %s", r)
	}
	// A plain table renamed away leaves its migrations in the ledger: refused, with
	// what to do.
	testenv.Exec(t, plain, `ALTER TABLE outbox RENAME TO outbox_old`)
	if r := run(t, append(plainVars, "SIDEBOX_OUTBOX_PARTITIONS=daily"), "migrate", "up"); r.code != 1 || !strings.Contains(r.stderr, "records migration 0001_create_outbox for outbox, not 0001_create_partitioned_outbox") {
		t.Errorf("migrate up with partitions over the ledger of a plain table: %s", r)
	}

	// Down with --force drops the table, its partitions and what goes with it.
	mustRun(t, vars, []string{"outbox table outbox: rolled back 0001_create_partitioned_outbox"}, "migrate", "down", "--force")
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname LIKE 'outbox%'`); n != 0 {
		t.Errorf("%d outbox relations left after migrate down", n)
	}
}
