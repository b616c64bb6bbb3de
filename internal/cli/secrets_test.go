package cli_test

import (
	"database/sql"
	"net/url"
	"strings"
	"syscall"
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
)

// secretForms returns the forms a password can take in a connection string: as is,
// and percent-encoded as URL user-info or as a query value.
func secretForms(pw string) []string {
	forms := []string{pw}
	userinfo := strings.TrimPrefix(url.UserPassword("u", pw).String(), "u:")
	for _, f := range []string{userinfo, url.QueryEscape(pw), url.PathEscape(pw)} {
		if !strings.Contains(strings.Join(forms, "\x00"), f) {
			forms = append(forms, f)
		}
	}
	return forms
}

func TestSecretForms(t *testing.T) {
	got := strings.Join(secretForms("a:b@c/d e%"), " | ")
	if got != "a:b@c/d e% | a%3Ab%40c%2Fd%20e%25 | a%3Ab%40c%2Fd+e%25 | a:b@c%2Fd%20e%25" {
		t.Errorf("secretForms = %s", got)
	}
}

// noSecrets fails the test for every line of out that holds one of the passwords in
// any of its forms.
func noSecrets(t *testing.T, where, out string, passwords ...string) {
	t.Helper()
	for i, line := range strings.Split(out, "\n") {
		for _, pw := range passwords {
			for _, f := range secretForms(pw) {
				if strings.Contains(line, f) {
					t.Errorf("%s, line %d, shows a password (as %q): %s", where, i+1, f, line)
				}
			}
		}
	}
}

// Every log line of the sidecar, in success and in failure, over TLS and with passwords
// that need encoding, is free of the passwords; so are /readyz, /metrics and the
// configuration errors.
func TestNoPasswordInLogs(t *testing.T) {
	t.Parallel()
	const (
		amqpPassword = "mq:p@ss/w0rd%S3cr3t&x"
		dbPassword   = "db p@ss'w0rd\\S3cr3t"
		wrongAMQP    = "wr0ng-mq-S3cr3t"
	)
	secrets := []string{password, amqpPassword, dbPassword, wrongAMQP}
	files, mq, dsn, _ := tlsServers(t)
	mq.Ctl(t, "add_user", "tricky", amqpPassword)
	mq.Ctl(t, "set_permissions", "-p", "/", "tricky", ".*", ".*", ".*")
	tlsURL, err := url.Parse(mq.TLSURL())
	if err != nil {
		t.Fatal(err)
	}
	tlsURL.User = url.UserPassword("tricky", amqpPassword)
	amqps := tlsURL.String()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	// The same database as a key=value string, the password quoted and escaped.
	kv := "host=" + u.Hostname() + " port=" + u.Port() + " dbname=app user=postgres sslmode=verify-full sslrootcert=" + files.CA +
		` password='` + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(dbPassword) + `'`
	tlsVars := []string{"SIDEBOX_AMQP_CA_FILE=" + files.CA, "SIDEBOX_AMQP_CERT_FILE=" + files.ClientCert, "SIDEBOX_AMQP_KEY_FILE=" + files.ClientKey}

	queue := testenv.Name(t, "secrets")
	fillQueue(t, mq.URL(), queue, 10)
	if r := run(t, []string{"SIDEBOX_DATABASE_URL=" + kv}, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, 'x' FROM generate_series(1, 20)`, queue); err != nil {
		t.Fatal(err)
	}

	scan := func(d *daemon, name string) {
		t.Helper()
		_, ready := d.get(t, "/readyz")
		_, metrics := d.get(t, "/metrics")
		noSecrets(t, name+" /readyz", ready, secrets...)
		noSecrets(t, name+" /metrics", metrics, secrets...)
		if code := d.stop(t, syscall.SIGTERM); code != 0 {
			t.Errorf("%s: exit %d after SIGTERM; log:\n%s", name, code, d.log())
		}
		noSecrets(t, name+" log", d.log(), secrets...)
	}

	// Working: relay and inbox over TLS, the database as key=value.
	d := start(t, append([]string{"SIDEBOX_DATABASE_URL=" + kv, "SIDEBOX_AMQP_URL=" + amqps, "SIDEBOX_INBOX_QUEUE=" + queue}, tlsVars...), "run")
	d.waitFor(t, "/readyz", 200, `"ready":true`)
	poll(t, d, 60e9, func() bool { return testenv.Count(t, db, `SELECT count(*) FROM inbox`) == 30 },
		func() string { return "not every message went through outbox, queue and inbox" })
	scan(d, "sidebox run")

	// Failing: a wrong AMQP password, a database whose certificate is not trusted.
	wrongMQ := *tlsURL
	wrongMQ.User = url.UserPassword("tricky", wrongAMQP)
	q := u.Query()
	q.Set("sslrootcert", testenv.NewTLS(t).CA)
	wrongDB := *u
	wrongDB.User = url.UserPassword("postgres", dbPassword)
	wrongDB.RawQuery = q.Encode()
	d = start(t, append([]string{"SIDEBOX_DATABASE_URL=" + wrongDB.String(), "SIDEBOX_AMQP_URL=" + wrongMQ.String() + "," + amqps}, tlsVars...), "relay")
	poll(t, d, 60e9, func() bool {
		return strings.Contains(d.log(), "username or password not allowed") && strings.Contains(d.log(), "certificate signed by unknown authority")
	}, func() string { return "no log of the refused login and certificate" })
	scan(d, "sidebox relay, failing")

	// Refused configuration.
	r := run(t, []string{"SIDEBOX_DATABASE_URL=" + wrongDB.String(), "SIDEBOX_AMQP_URL=" + amqps + ",https://u:" + wrongAMQP + "@x/",
		"SIDEBOX_AMQP_CA_FILE=/nonexistent"}, "relay")
	if r.code != 2 {
		t.Errorf("bad configuration: %s", r)
	}
	noSecrets(t, "bad configuration", r.stdout+r.stderr, secrets...)
}
