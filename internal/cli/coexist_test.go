package cli_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// psql pipes sql into `psql -v ON_ERROR_STOP=1` on dsn, as a user's own tool would.
func psql(t *testing.T, dsn, sql string) {
	t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("psql is not installed: " + err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn)
	cmd.Stdin = strings.NewReader(sql)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}

// `sidebox migrate print | psql` then `sidebox migrate up`: up recognises the tables
// and exits 0, and the relay and the inbox work on them.
func TestMigratePrintThenUp(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}
	printed := run(t, nil, "migrate", "print")
	if printed.code != 0 || !strings.Contains(printed.stdout, "`sidebox migrate up`\n-- recognises") {
		t.Fatalf("migrate print: %s", printed)
	}
	psql(t, dsn, printed.stdout)
	r := run(t, vars, "migrate", "up")
	if r.code != 0 {
		t.Fatalf("migrate up after the printed SQL: %s", r)
	}
	for _, want := range []string{"outbox table outbox: 0001_create_outbox was there already (applied by another tool); recorded",
		"outbox table outbox: 0002_retrying_index was there already", "inbox table inbox: 0001_create_inbox was there already"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("migrate up lacks %q:\n%s", want, r)
		}
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 || !strings.Contains(r.stdout, "outbox table outbox: up to date") {
		t.Errorf("second migrate up: %s", r)
	}
	if n, want := testenv.Count(t, db, `SELECT count(*) FROM sidebox_migrations`), migrationSteps(t); n != want {
		t.Errorf("%d migrations recorded, want %d (every step of both tables)", n, want)
	}
	// The trigger exists once, not twice.
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_wakeup'`); n != 1 {
		t.Errorf("%d outbox_wakeup triggers", n)
	}
	// And down undoes all of it.
	if r := run(t, vars, "migrate", "down"); r.code != 0 || testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname IN ('outbox', 'inbox')`) != 0 {
		t.Errorf("migrate down: %s", r)
	}
}

// With tables of other names, in schemas of their own, the printed SQL makes what
// migrate up would: the user's tool applies it, and up finds the tables there already
// (steps that create no table or index, such as a trigger's, up applies again).
func TestMigratePrintNamesTheConfiguredTables(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	tables := []string{"SIDEBOX_OUTBOX_TABLE=sales.orders_outbox,billing.outbox", "SIDEBOX_INBOX_TABLE=sales.orders_inbox"}
	printed := run(t, tables, "migrate", "print")
	if printed.code != 0 {
		t.Fatalf("migrate print: %s", printed)
	}
	psql(t, dsn, printed.stdout)
	r := run(t, append([]string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}, tables...), "migrate", "up")
	if r.code != 0 {
		t.Fatalf("migrate up after the printed SQL: %s", r)
	}
	for _, want := range []string{"outbox table sales.orders_outbox: 0001_create_outbox was there already",
		"outbox table billing.outbox: 0001_create_outbox was there already", "inbox table sales.orders_inbox: 0001_create_inbox was there already"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("migrate up lacks %q:\n%s", want, r)
		}
	}
	for _, obj := range []string{"sales.orders_outbox_wakeup", "billing.outbox_wakeup", "sales.orders_outbox_unkeyed_idx", "sales.orders_inbox"} {
		if testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)`, obj) != 1 {
			t.Errorf("the printed SQL did not make %s", obj)
		}
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname IN ('outbox', 'inbox') AND relnamespace = 'public'::regnamespace`); n != 0 {
		t.Errorf("the printed SQL made %d tables of the default names in public", n)
	}
	// The wake-up function notifies on the table's own channel.
	var body string
	if err := db.QueryRow(`SELECT prosrc FROM pg_proc WHERE oid = 'sales.orders_outbox_wakeup()'::regprocedure`).Scan(&body); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "'sidebox_sales.orders_outbox'") {
		t.Errorf("the wake-up function of sales.orders_outbox notifies elsewhere:\n%s", body)
	}
}

// `sidebox migrate up` first, then the user's tool applies the printed SQL: it runs
// without error over what up made, and up stays up to date.
func TestMigrateUpThenPrint(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}
	if r := run(t, vars, "migrate", "up"); r.code != 0 || !strings.Contains(r.stdout, "applied 0001_create_outbox") {
		t.Fatalf("migrate up: %s", r)
	}
	psql(t, dsn, run(t, nil, "migrate", "print").stdout)
	if r := run(t, vars, "migrate", "up"); r.code != 0 || !strings.Contains(r.stdout, "inbox table inbox: up to date") {
		t.Errorf("migrate up after the printed SQL: %s", r)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_wakeup'`); n != 1 {
		t.Errorf("%d outbox_wakeup triggers", n)
	}
}

// A table of the same name that is not sidebox's is refused, not taken over.
func TestMigrateUpRefusesForeignTable(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	testenv.Exec(t, db, `CREATE TABLE outbox (id int)`)
	r := run(t, []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}, "migrate", "up")
	if r.code != 1 || !strings.Contains(r.stderr, "table outbox exists but lacks column(s) seq, exchange") {
		t.Errorf("want exit 1 naming the missing columns, got %s", r)
	}
}

// migrationSteps is the number of migration steps of the outbox and the inbox together.
func migrationSteps(t *testing.T) int {
	t.Helper()
	out, err := outboxdb.Migrations(outbox.MigrationFiles())
	if err != nil {
		t.Fatal(err)
	}
	in, err := inboxdb.Migrations(inbox.MigrationFiles())
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Steps) + len(in.Steps)
}
