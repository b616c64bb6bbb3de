package cli_test

import (
	"database/sql"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// The sidecar behind PgBouncer with its default configuration, in transaction and in
// session mode: migrations run through it, the relay publishes every committed row and
// the inbox of the same sidecar stores each once. In transaction mode LISTEN cannot
// work through the pooler: the sidecar says so once and polls instead; in session mode
// notifications wake the relay.
func TestSidecarBehindPgBouncer(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{testenv.PoolTransaction, testenv.PoolSession} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			direct := testenv.DatabaseURL(t)
			bouncer := testenv.StartPgBouncer(t, direct, mode)
			pooled := bouncer.URL(direct)
			queue, _ := amqpQueue(t)
			vars := []string{
				"SIDEBOX_DATABASE_URL=" + withPassword(t, pooled),
				"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
				"SIDEBOX_INBOX_QUEUE=" + queue,
				"SIDEBOX_BATCH_SIZE=100",
				"SIDEBOX_POLL_INTERVAL=500ms",
			}
			if r := run(t, vars, "migrate", "up"); r.code != 0 {
				t.Fatalf("migrate up through pgbouncer (%s mode): %s\n%s", mode, r, bouncer.Log())
			}
			// The service writes through the pooler too; with lib/pq, queries with
			// arguments need binary_parameters=yes there (one round trip each).
			db, err := sql.Open("postgres", pooled+"&binary_parameters=yes")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()

			d := start(t, vars, "run")
			d.waitFor(t, "/readyz", 200, `"ready":true`)
			const rows = 2000
			if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, queue, rows); err != nil {
				t.Fatal(err)
			}
			// Single messages, each in its own transaction, as a service writes them.
			for i := range 20 {
				if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) VALUES ($1, $2)`, queue, []byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			want := rows + 20
			deadline := time.Now().Add(60 * time.Second)
			for testenv.Count(t, db, `SELECT count(*) FROM inbox`) < want || testenv.Count(t, db, `SELECT count(*) FROM outbox`) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s mode: after 60 s %d of %d rows in the inbox, %d left in the outbox; log:\n%s\n--- pgbouncer ---\n%s",
						mode, testenv.Count(t, db, `SELECT count(*) FROM inbox`), want, testenv.Count(t, db, `SELECT count(*) FROM outbox`), d.log(), bouncer.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			if n := testenv.Count(t, db, `SELECT count(*) FROM inbox`); n != want {
				t.Errorf("%s mode: inbox holds %d rows, want %d", mode, n, want)
			}
			switch mode {
			case testenv.PoolTransaction:
				d.waitFor(t, "/metrics", 200, `sidebox_outbox_wakeups_polled{table="outbox"} 1`)
				deadline := time.Now().Add(10 * time.Second)
				for !strings.Contains(d.log(), "notifications do not arrive") {
					if time.Now().After(deadline) {
						t.Fatalf("transaction mode: no warning that notifications do not arrive; log:\n%s", d.log())
					}
					time.Sleep(50 * time.Millisecond)
				}
			case testenv.PoolSession:
				d.waitFor(t, "/metrics", 200, `sidebox_outbox_wakeups_polled{table="outbox"} 0`)
			}
			if code, body := d.get(t, "/readyz"); code != 200 {
				t.Errorf("/readyz = %d %s", code, body)
			}
			if code := d.stop(t, syscall.SIGTERM); code != 0 {
				t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
			}
			// Said once, not per probe or per claim.
			for _, once := range []string{"notifications do not arrive", "pooled per transaction"} {
				if n := strings.Count(d.log(), once); n > 2 { // relay and inbox each say it once
					t.Errorf("%s mode: %q logged %d times; log:\n%s", mode, once, n, d.log())
				}
			}
		})
	}
}

// With SIDEBOX_LISTEN_DATABASE_URL set to a direct connection, a sidecar behind a
// transaction pooler is woken by notifications: with a poll interval of 30 s, a
// single message written after an idle spell arrives long before the next poll.
func TestListenDatabaseURLBypassesPooler(t *testing.T) {
	t.Parallel()
	direct := testenv.DatabaseURL(t)
	bouncer := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction)
	pooled := bouncer.URL(direct)
	queue, queued := amqpQueue(t)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, pooled),
		"SIDEBOX_LISTEN_DATABASE_URL=" + withPassword(t, direct),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_POLL_INTERVAL=30s",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	db, err := sql.Open("postgres", pooled+"&binary_parameters=yes")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d := start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"ready":true`)
	d.waitFor(t, "/metrics", 200, `sidebox_outbox_wakeups_polled{table="outbox"} 0`)
	for i := 1; i <= 3; i++ {
		if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) VALUES ($1, 'x')`, queue); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second) // a third of the poll interval
		for queued() < i {
			if time.Now().After(deadline) {
				t.Fatalf("message %d not delivered within 10 s with a poll interval of 30 s: no wake-up; log:\n%s", i, d.log())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if strings.Contains(d.log(), "notifications do not arrive") {
		t.Errorf("warned about notifications with a direct LISTEN connection; log:\n%s", d.log())
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
}

// A pooler that refuses the connection (here a startup parameter of the user's own,
// which PgBouncer 1.18 does not know) is said in the log at once, and once, not only
// in /readyz: an idle sidecar is never silent about why.
func TestRefusedConnectionIsLogged(t *testing.T) {
	t.Parallel()
	direct := testenv.DatabaseURL(t)
	bouncer := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction)
	refused := bouncer.URL(direct) + "&options=" + "-c%20statement_timeout%3D5000"
	d := start(t, []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, refused),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
	}, "relay")
	d.waitFor(t, "/readyz", 503, "unsupported startup parameter")
	deadline := time.Now().Add(10 * time.Second)
	warned := func() int {
		n := 0
		for line := range strings.SplitSeq(d.log(), "\n") {
			if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "cannot look up outbox table") &&
				strings.Contains(line, "unsupported startup parameter: options") {
				n++
			}
		}
		return n
	}
	for warned() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming the refused parameter; log:\n%s", d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.waitFor(t, "/readyz", 503, "unsupported startup parameter") // still retrying, some attempts later
	if n := warned(); n != 1 {
		t.Errorf("warned %d times, want once; log:\n%s", n, d.log())
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
}
