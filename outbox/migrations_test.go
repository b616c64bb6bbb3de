package outbox_test

import (
	"context"
	"database/sql"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// objects lists the names of the tables, indexes, sequences, functions and triggers
// in schema whose name contains word.
func objects(t *testing.T, db *sql.DB, schema, word string) []string {
	t.Helper()
	rows, err := db.Query(`
		SELECT c.relkind::text || ':' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname LIKE '%' || $2 || '%'
		UNION ALL
		SELECT 'f:' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1 AND p.proname LIKE '%' || $2 || '%'
		UNION ALL
		SELECT 't:' || g.tgname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND NOT g.tgisinternal AND g.tgname LIKE '%' || $2 || '%'`, schema, word)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// Up, down and up again, for the default table and for a schema-qualified one with
// another name: every object is created under the derived names, all of them go away
// on down, and the table works after the second up.
func TestMigrationsUpDownUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		table  string
		schema string
		name   string
	}{
		{"outbox", "public", "outbox"},
		{"app.orders_outbox", "app", "orders_outbox"},
	} {
		t.Run(tc.table, func(t *testing.T) {
			db, dsn := testenv.DB(t)
			table := pg.MustParseTable(tc.table)
			ms := migrations(t)
			ctx := context.Background()
			n := tc.name
			want := []string{
				"S:" + n + "_seq_seq", "S:" + n + "_wakeup", "f:" + n + "_wakeup",
				"i:" + n + "_available_idx", "i:" + n + "_dead_idx", "i:" + n + "_ordering_idx", "i:" + n + "_pkey", "i:" + n + "_published_idx", "i:" + n + "_retrying_idx", "i:" + n + "_unkeyed_idx",
				"r:" + n, "t:" + n + "_wakeup", "r:" + n + "_relays", "i:" + n + "_relays_pkey",
			}
			sort.Strings(want)

			for round := 1; round <= 2; round++ {
				applied, err := ms.Up(ctx, db, table)
				if err != nil {
					t.Fatalf("up (round %d): %v", round, err)
				}
				if len(applied) != len(ms.Steps) {
					t.Errorf("up applied %v, want all %d steps", applied, len(ms.Steps))
				}
				if got := objects(t, db, tc.schema, "outbox"); strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("after up: objects %v\nwant %v", got, want)
				}
				if again, err := ms.Up(ctx, db, table); err != nil || len(again) != 0 {
					t.Errorf("second up applied %v, %v; want nothing", again, err)
				}
				pending, err := ms.Pending(ctx, db, table)
				if err != nil || len(pending) != 0 {
					t.Errorf("pending after up: %v, %v", pending, err)
				}
				assertWakeup(t, db, dsn, table)

				rolled, err := ms.Down(ctx, db, table)
				if err != nil {
					t.Fatalf("down (round %d): %v", round, err)
				}
				if len(rolled) != len(ms.Steps) {
					t.Errorf("down rolled back %v, want all %d steps", rolled, len(ms.Steps))
				}
				if got := objects(t, db, tc.schema, "outbox"); len(got) != 0 {
					t.Errorf("after down, left: %v", got)
				}
				if exists, err := pg.TableExists(ctx, db, table); err != nil || exists {
					t.Errorf("table exists after down: %v, %v", exists, err)
				}
			}
		})
	}
}

// assertWakeup checks the commit-time wake-up of table: an insert notifies the
// table's channel while the flag is up, once per transaction, and not while it is down.
// The writer runs with the default search_path, so the trigger must find its sequence
// through its own setting.
func assertWakeup(t *testing.T, db *sql.DB, dsn string, table pg.Table) {
	t.Helper()
	l := pq.NewListener(dsn, 100*time.Millisecond, time.Second, nil)
	defer l.Close()
	if err := l.Listen(table.Channel()); err != nil {
		t.Fatal(err)
	}
	insert := func() {
		t.Helper()
		if _, err := db.Exec(`INSERT INTO ` + table.String() + ` (exchange, routing_key, payload) VALUES ('x', 'k', 'p')`); err != nil {
			t.Fatal(err)
		}
	}
	setFlag := func(v int) {
		t.Helper()
		if _, err := db.Exec(`SELECT setval($1::regclass, $2)`, table.Ident("_wakeup"), v); err != nil {
			t.Fatal(err)
		}
	}
	next := func() string {
		t.Helper()
		select {
		case n := <-l.Notify:
			if n == nil {
				t.Fatal("LISTEN connection lost")
			}
			if n.Channel != table.Channel() {
				t.Fatalf("notification on %q, want %q", n.Channel, table.Channel())
			}
			return n.Extra
		case <-time.After(5 * time.Second):
			t.Fatal("no notification")
		}
		return ""
	}

	setFlag(0)
	insert() // no notification: nobody sleeps
	if _, err := db.Exec(`SELECT pg_notify($1, 'marker')`, table.Channel()); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "marker" {
		t.Fatalf("an insert notified while the flag was down (got %q before the marker)", got)
	}
	setFlag(1)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := tx.Exec(`INSERT INTO ` + table.String() + ` (exchange, routing_key, payload) VALUES ('x', 'k', 'p')`); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "" {
		t.Fatalf("wake-up notification carries %q, want an empty payload", got)
	}
	if _, err := db.Exec(`SELECT pg_notify($1, 'marker2')`, table.Channel()); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "marker2" {
		t.Fatalf("a three-row transaction notified more than once (got %q before the marker)", got)
	}
	// That writer took the flag: the writers after it do not notify, until a relay
	// raises the flag again (migration 0006).
	var flag int64
	if err := db.QueryRow(`SELECT last_value FROM ` + table.Ident("_wakeup")).Scan(&flag); err != nil {
		t.Fatal(err)
	}
	if flag < 2 {
		t.Errorf("after the notifying commit the wake-up flag is %d, want 2 or more (taken by the writer)", flag)
	}
	for range 5 {
		insert()
	}
	if _, err := db.Exec(`SELECT pg_notify($1, 'marker3')`, table.Channel()); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "marker3" {
		t.Fatalf("a writer notified after another had taken the flag (got %q before the marker)", got)
	}
	setFlag(1)
	insert()
	if got := next(); got != "" {
		t.Fatalf("the flag raised again: notification %q, want the writer's", got)
	}
	setFlag(0)
	if _, err := db.Exec(`DELETE FROM ` + table.String()); err != nil {
		t.Fatal(err)
	}
}

// Rewriting the snippets for another table leaves no name of the default table behind
// and renames every derived object, including the notification channel.
func TestMigrationsRewriteEveryName(t *testing.T) {
	ms := migrations(t)
	table := pg.MustParseTable("billing.orders_outbox")
	bare := regexp.MustCompile(`\boutbox`)
	for _, step := range ms.Steps {
		for _, sql := range []string{step.Up, step.Down} {
			out := ms.Rewrite(sql, table)
			if m := bare.FindAllString(out, -1); len(m) != 0 {
				t.Errorf("migration %04d: %d names of the default table left after rewriting:\n%s", step.Version, len(m), out)
			}
			// The channel names the schema (tables of one name in two schemas must
			// not wake each other's relays); nothing else may.
			if strings.Contains(strings.ReplaceAll(out, "'"+table.Channel()+"'", ""), "billing") {
				t.Errorf("migration %04d: the schema was written into the SQL; it must come from search_path", step.Version)
			}
			if strings.Count(out, "orders_outbox") < strings.Count(sql, "outbox") {
				t.Errorf("migration %04d: fewer renamed names than names", step.Version)
			}
		}
	}
	up := ms.Rewrite(ms.Steps[0].Up, table)
	for _, want := range []string{
		"CREATE TABLE IF NOT EXISTS orders_outbox", "'sidebox_billing.orders_outbox'", "CREATE SEQUENCE IF NOT EXISTS orders_outbox_wakeup",
		"FROM orders_outbox_wakeup", "CREATE INDEX IF NOT EXISTS orders_outbox_unkeyed_idx ON orders_outbox", "tgrelid = 'orders_outbox'::regclass",
		"CREATE CONSTRAINT TRIGGER orders_outbox_wakeup AFTER INSERT ON orders_outbox",
	} {
		if !strings.Contains(up, want) {
			t.Errorf("rewritten up migration lacks %q", want)
		}
	}
	if table.Channel() != "sidebox_billing.orders_outbox" {
		t.Errorf("Channel() = %q; the trigger notifies sidebox_billing.orders_outbox", table.Channel())
	}
	for _, c := range []struct{ table, channel string }{
		{"outbox", "sidebox_outbox"},
		{"a.outbox", "sidebox_a.outbox"},
		{"b.outbox", "sidebox_b.outbox"},
		{strings.Repeat("s", 40) + "." + strings.Repeat("t", 40), "sidebox_"}, // hashed: 24 bytes
	} {
		got := pg.MustParseTable(c.table).Channel()
		if !strings.HasPrefix(got, c.channel) || len(got) > 63 || (len(c.channel) > 8 && got != c.channel) {
			t.Errorf("Channel() of %s = %q, want %q", c.table, got, c.channel)
		}
	}
	if got := ms.Rewrite(ms.Steps[0].Up, pg.MustParseTable("outbox")); got != ms.Steps[0].Up {
		t.Error("rewriting for the default name changed the SQL")
	}
}

// Sidecars starting together migrate the same table at once without errors.
func TestMigrationsConcurrentUp(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	table := pg.MustParseTable("outbox")
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			errs <- outbox.Migrate(context.Background(), db, table.String())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent up: %v", err)
		}
	}
	if exists, err := pg.TableExists(context.Background(), db, table); err != nil || !exists {
		t.Errorf("table after concurrent up: %v, %v", exists, err)
	}
}

// migrations loads the embedded migrations as the CLI does.
func migrations(t *testing.T) pg.Migrations {
	t.Helper()
	ms, err := pg.LoadMigrations(outbox.MigrationFiles(), ".", outbox.DefaultTable)
	if err != nil || ms.Base != "outbox" || len(ms.Steps) == 0 {
		t.Fatalf("embedded migrations: %v (%d steps)", err, len(ms.Steps))
	}
	return ms
}
