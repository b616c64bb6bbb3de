package cli_test

import (
	"database/sql"
	"net/url"
	"strings"
	"syscall"
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
)

// tlsServers starts a private PostgreSQL that takes TLS connections only and a private
// RabbitMQ with a TLS listener that demands a client certificate, both with
// certificates of a fresh CA. It returns the CA files, a database URL
// (sslmode=verify-full, sslrootcert, the test password) of a fresh database with the
// tables, and an amqps:// URL with the test password.
func tlsServers(t *testing.T) (files *testenv.TLSFiles, mq *testenv.RabbitMQ, dsn, amqps string) {
	t.Helper()
	files = testenv.NewTLS(t)
	pgsrv := testenv.StartPostgres(t, testenv.PostgresTLS(files))
	mq = testenv.StartRabbitMQ(t, testenv.RabbitMQTLS(files))
	privateAMQP(t, mq)
	amqps = strings.Replace(mq.TLSURL(), "guest:guest", "sidebox:"+password, 1)

	admin, err := sql.Open("postgres", pgsrv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`CREATE DATABASE app`); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(pgsrv.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/app"
	u.User = url.UserPassword("postgres", password)
	return files, mq, u.String(), amqps
}

// The relay runs through PostgreSQL with sslmode=verify-full and RabbitMQ over amqps://
// with mutual TLS; neither server takes a connection without TLS.
func TestRelayOverTLS(t *testing.T) {
	t.Parallel()
	files, mq, dsn, amqps := tlsServers(t)
	target := testenv.Name(t, "tls_target")
	fillQueue(t, mq.URL(), target, 0)
	depth := queueDepth(t, mq.URL(), target)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + dsn,
		"SIDEBOX_AMQP_URL=" + amqps,
		"SIDEBOX_AMQP_CA_FILE=" + files.CA,
		"SIDEBOX_AMQP_CERT_FILE=" + files.ClientCert,
		"SIDEBOX_AMQP_KEY_FILE=" + files.ClientKey,
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ssl bool
	if err := db.QueryRow(`SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil || !ssl {
		t.Fatalf("test connection over TLS: %v %v", ssl, err)
	}
	const rows = 100
	if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, 'x' FROM generate_series(1, $2)`, target, rows); err != nil {
		t.Fatal(err)
	}

	d := start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"ready":true`)
	poll(t, d, 60e9, func() bool { return depth() == rows }, func() string { return "messages not all published" })
	// The rows go once their confirms are settled, just after the broker has them.
	poll(t, d, 30e9, func() bool { return testenv.Count(t, db, `SELECT count(*) FROM outbox`) == 0 },
		func() string { return "rows left in the outbox" })
	// Every connection of the sidecar to PostgreSQL uses TLS (the server refuses others).
	if n := testenv.Count(t, db, `SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'sidebox' AND s.ssl`); n == 0 {
		t.Error("no sidebox session over TLS in pg_stat_activity")
	}
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
	noSecrets(t, "sidebox relay log", d.log(), password)
}

// A server certificate from another CA is refused, for both servers: the sidecar says
// why in its log and in /readyz, stays not ready, and shows no password.
func TestWrongCARefused(t *testing.T) {
	t.Parallel()
	files, _, dsn, amqps := tlsServers(t)
	wrong := testenv.NewTLS(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("sslrootcert", wrong.CA)
	u.RawQuery = q.Encode()
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + u.String(),
		"SIDEBOX_AMQP_URL=" + amqps,
		"SIDEBOX_AMQP_CA_FILE=" + wrong.CA,
		"SIDEBOX_AMQP_CERT_FILE=" + files.ClientCert,
		"SIDEBOX_AMQP_KEY_FILE=" + files.ClientKey,
	}
	d := start(t, vars, "relay")
	body := d.waitFor(t, "/readyz", 503, `"rabbitmq":"not connected to RabbitMQ: tls: failed to verify certificate: x509: certificate signed by unknown authority`)
	body += d.waitFor(t, "/readyz", 503, `"postgres":"database unreachable: tls: failed to verify certificate: x509: certificate signed by unknown authority`)
	if strings.Contains(body, password) {
		t.Errorf("/readyz shows the password: %s", body)
	}
	poll(t, d, 30e9, func() bool {
		return strings.Contains(d.log(), `"msg":"cannot connect to RabbitMQ; retrying"`) && strings.Contains(d.log(), "certificate signed by unknown authority")
	}, func() string { return "no log line about the refused certificate" })
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
	noSecrets(t, "sidebox relay log", d.log(), password)
}
