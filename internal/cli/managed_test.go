package cli_test

import (
	"database/sql"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// The managed-PostgreSQL profile: a role that is no superuser, cannot create
// databases, roles or schemas, and owns one schema, runs the migrations and the
// sidecar (relay and inbox) with tables in its schema, and every row arrives.
func TestManagedProfileNonSuperuser(t *testing.T) {
	t.Parallel()
	dsn := testenv.DatabaseURL(t)
	admin, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	role := testenv.Name(t, "app")
	// Roles belong to the whole server: drop it even when the test fails (before the
	// database goes, so that DROP OWNED can reach what the role owns there).
	t.Cleanup(func() {
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Error(err)
			return
		}
		defer db.Close()
		_, _ = db.Exec(`DROP OWNED BY ` + role + ` CASCADE`)
		_, _ = db.Exec(`DROP ROLE IF EXISTS ` + role)
	})
	// What the README tells an administrator to run, and nothing more.
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE`,
		`REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
		`REVOKE CREATE ON DATABASE ` + dbName(t, dsn) + ` FROM PUBLIC`,
		`CREATE SCHEMA app AUTHORIZATION ` + role,
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	appDSN := u.String()
	queue, _ := amqpQueue(t)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, appDSN),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_OUTBOX_TABLE=app.outbox",
		"SIDEBOX_INBOX_TABLE=app.inbox",
		"SIDEBOX_INBOX_QUEUE=" + queue,
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatalf("migrate up as a non-superuser owning its schema: %s", r)
	}
	app, err := sql.Open("postgres", appDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	d := start(t, vars, "run")
	d.waitFor(t, "/readyz", 200, `"ready":true`)
	const rows = 300
	if _, err := app.Exec(`INSERT INTO app.outbox (routing_key, payload) SELECT $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, queue, rows); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for testenv.Count(t, app, `SELECT count(*) FROM app.inbox`) < rows {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d rows in the inbox after 30 s; log:\n%s", testenv.Count(t, app, `SELECT count(*) FROM app.inbox`), rows, d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := run(t, vars, "status", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"pending":0`) {
		t.Errorf("status as the non-superuser: %s", r)
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
	if r := run(t, vars, "migrate", "down", "--force"); r.code != 0 {
		t.Errorf("migrate down as the non-superuser: %s", r)
	}
}

// dbName returns the database of a URL.
func dbName(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}
