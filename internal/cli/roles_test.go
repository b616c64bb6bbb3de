package cli_test

import (
	"database/sql"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// roles creates the roles of the shipped snippet files in the test's database under
// unique names, plus a login in each, and drops them all in t.Cleanup. It returns the
// database URL of each login, with the test password.
func roles(t *testing.T, db *sql.DB, dsn string) map[string]string {
	t.Helper()
	names := map[string]string{}
	var drop []string
	for _, file := range []string{"../../outbox/migrations/roles.sql.example", "../../inbox/migrations/roles.sql.example"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		script := string(b)
		for _, role := range []string{"sidebox_outbox_writer", "sidebox_relay", "sidebox_inbox"} {
			if strings.Contains(script, "CREATE ROLE "+role+" ") {
				names[role] = testenv.Name(t, role)
				script = strings.ReplaceAll(script, role, names[role])
				drop = append(drop, names[role])
			}
		}
		if _, err := db.Exec(script); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	logins := map[string]string{}
	for role, name := range names {
		login := name + "_login"
		if _, err := db.Exec(`CREATE ROLE ` + login + ` LOGIN PASSWORD '` + password + `' IN ROLE ` + name); err != nil {
			t.Fatal(err)
		}
		drop = append(drop, login)
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(login, password)
		logins[role] = u.String()
	}
	// Roles belong to the server, not to the database the test drops.
	t.Cleanup(func() {
		list := strings.Join(drop, ", ")
		if _, err := db.Exec(`DROP OWNED BY ` + list); err != nil {
			t.Errorf("drop owned by the test roles: %v", err)
		}
		if _, err := db.Exec(`DROP ROLE ` + list); err != nil {
			t.Errorf("drop the test roles: %v", err)
		}
	})
	return logins
}

// denied runs query as a login and expects PostgreSQL to refuse it.
func denied(t *testing.T, dsn, query string) {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(query); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("%s: got %v, want permission denied", query, err)
	}
}

// The least-privilege roles shipped beside the migrations suffice: the relay and the
// inbox consumer run as logins in them, and those logins can touch nothing else.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	if r := run(t, []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	login := roles(t, db, dsn)
	target, published := amqpQueue(t)
	inboxQueue, _ := amqpQueue(t)

	// A writer inserts in its business transaction.
	writer, err := sql.Open("postgres", login["sidebox_outbox_writer"])
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	const rows = 50
	if _, err := writer.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, 'x' FROM generate_series(1, $2)`, target, rows); err != nil {
		t.Fatalf("insert as the writer role: %v", err)
	}

	relay := start(t, []string{
		"SIDEBOX_DATABASE_URL=" + login["sidebox_relay"],
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_STATUS_INTERVAL=200ms",
	}, "relay")
	relay.waitFor(t, "/readyz", 200, `"ready":true`)
	poll(t, relay, 60e9, func() bool { return published() == rows }, func() string { return "rows not all published" })
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox`); n != 0 {
		t.Errorf("%d rows left in the outbox", n)
	}
	relay.waitFor(t, "/metrics", 200, `sidebox_outbox_pending{table="outbox"} 0`)
	// The relay sleeps now, its wake-up flag up; a writer's insert wakes it.
	if _, err := writer.Exec(`INSERT INTO outbox (routing_key, payload) VALUES ($1, 'y')`, target); err != nil {
		t.Fatal(err)
	}
	poll(t, relay, 60e9, func() bool { return published() == rows+1 }, func() string { return "the late row was not published" })

	inbox := start(t, []string{
		"SIDEBOX_DATABASE_URL=" + login["sidebox_inbox"],
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_INBOX_QUEUE=" + inboxQueue,
		"SIDEBOX_STATUS_INTERVAL=200ms",
	}, "inbox")
	inbox.waitFor(t, "/readyz", 200, `"ready":true`)
	conn, err := amqp.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "a"} {
		if err := ch.Publish("", inboxQueue, false, false, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	inbox.waitFor(t, "/metrics", 200, `sidebox_inbox_unprocessed{table="inbox"} 2`)

	for _, d := range []*daemon{relay, inbox} {
		if code := d.stop(t, syscall.SIGTERM); code != 0 {
			t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
		}
		noSecrets(t, "log", d.log(), password)
		if strings.Contains(d.log(), "permission denied") {
			t.Errorf("a sidecar lacked a privilege:\n%s", d.log())
		}
	}

	denied(t, login["sidebox_relay"], `SELECT count(*) FROM inbox`)
	denied(t, login["sidebox_relay"], `INSERT INTO outbox (payload) VALUES ('z')`)
	denied(t, login["sidebox_relay"], `SELECT count(*) FROM sidebox_migrations`)
	denied(t, login["sidebox_inbox"], `SELECT count(*) FROM outbox`)
	denied(t, login["sidebox_outbox_writer"], `SELECT count(*) FROM outbox`)
	denied(t, login["sidebox_outbox_writer"], `DELETE FROM inbox`)
}
