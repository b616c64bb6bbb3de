package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// The password put into every URL the tests hand to sidebox; it must never come out.
const password = "pw-S3cr3t-7781"

const (
	testVersion   = "v9.8.7-test"
	testCommit    = "0123abcd"
	testBuildDate = "2026-01-02T03:04:05Z"
)

// binary is the sidebox executable built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidebox-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "sidebox")
	ldflags := "-X github.com/sidebox/sidebox/internal/cli.version=" + testVersion +
		" -X github.com/sidebox/sidebox/internal/cli.commit=" + testCommit +
		" -X github.com/sidebox/sidebox/internal/cli.buildDate=" + testBuildDate
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", binary, "github.com/sidebox/sidebox/cmd/sidebox")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sidebox:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// env is the child's environment: this process's, less every SIDEBOX_ variable, plus vars.
func env(vars ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDEBOX_") {
			out = append(out, kv)
		}
	}
	return append(out, vars...)
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs sidebox to completion, at most 30 s.
func run(t *testing.T, vars []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env(vars...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("sidebox %v: %v", args, err)
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	if strings.Contains(r.stdout+r.stderr, password) {
		t.Errorf("sidebox %v printed the password:\n%s", args, r)
	}
	return r
}

// withPassword adds the test password to a database URL or key=value DSN (the test
// servers trust local connections, so it changes nothing but what could leak).
func withPassword(t *testing.T, dsn string) string {
	t.Helper()
	if !strings.Contains(dsn, "://") {
		return dsn + " password=" + password
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		code int
		want string // in stderr for errors, stdout for help
	}{
		{nil, 2, "no command given"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"status", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"relay", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"migrate"}, 2, "want a subcommand"},
		{[]string{"migrate", "sideways"}, 2, `unknown subcommand "sideways"`},
		{[]string{"migrate", "down", "--forse"}, 2, "flag provided but not defined: -forse"},
		{[]string{"help"}, 0, "Usage: sidebox <command>"},
		{[]string{"-h"}, 0, "Usage: sidebox <command>"},
		{[]string{"status", "-h"}, 0, "Usage: sidebox status [--json]"},
		{[]string{"status", "--help"}, 0, "-json"},
		{[]string{"migrate", "--help"}, 0, "Usage: sidebox migrate up | down [--force] | print [--down]"},
		{[]string{"migrate", "-h"}, 0, "Usage: sidebox migrate up | down"},
		{[]string{"migrate", "up", "--help"}, 0, "Usage: sidebox migrate up\n"},
		{[]string{"migrate", "down", "-h"}, 0, "-force"},
		{[]string{"migrate", "print", "--help"}, 0, "Usage: sidebox migrate print [--down]"},
		{[]string{"run", "--help"}, 0, "Usage: sidebox run\n"},
		{[]string{"relay", "-h"}, 0, "Usage: sidebox relay\n"},
		{[]string{"inbox", "--help"}, 0, "Usage: sidebox inbox\n"},
		{[]string{"inject", "-h"}, 0, "Usage: sidebox inject\n"},
		{[]string{"version", "--help"}, 0, "Usage: sidebox version\n"},
		{[]string{"help", "migrate"}, 0, "Usage: sidebox migrate up | down"},
		{[]string{"--help"}, 0, "Usage: sidebox <command>"},
	} {
		r := run(t, nil, tt.args...)
		out := r.stderr
		if tt.code == 0 {
			out = r.stdout
		}
		if r.code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("sidebox %q: want exit %d and %q, got %s", tt.args, tt.code, tt.want, r)
		}
		if tt.code == 2 && !strings.Contains(r.stderr, "Usage: sidebox") {
			t.Errorf("sidebox %q: no usage on stderr: %s", tt.args, r)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "version")
	if r.code != 0 {
		t.Fatalf("version: %s", r)
	}
	for _, want := range []string{"version:    " + testVersion + "\n", "commit:     " + testCommit + "\n", "go:         go1.", "built:      " + testBuildDate + "\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("version lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestBadConfiguration(t *testing.T) {
	t.Parallel()
	db := "SIDEBOX_DATABASE_URL=postgres://app:" + password + "@127.0.0.1:1/app?sslmode=disable"
	mq := "SIDEBOX_AMQP_URL=amqp://app:" + password + "@127.0.0.1:1/"
	for _, tt := range []struct {
		name string
		args []string
		vars []string
		want string
	}{
		{"batch size", []string{"relay"}, []string{db, mq, "SIDEBOX_BATCH_SIZE=0"},
			`SIDEBOX_BATCH_SIZE: must be between 1 and 10000, got 0`},
		{"duration", []string{"run"}, []string{db, mq, "SIDEBOX_POLL_INTERVAL=fast"},
			`SIDEBOX_POLL_INTERVAL: must be a duration`},
		{"table name", []string{"migrate", "up"}, []string{db, "SIDEBOX_OUTBOX_TABLE=Outbox; drop table x"},
			`SIDEBOX_OUTBOX_TABLE: "Outbox; drop table x" is not a lower-case SQL identifier`},
		{"amqp scheme", []string{"relay"}, []string{db, "SIDEBOX_AMQP_URL=https://app:" + password + "@127.0.0.1/"},
			`SIDEBOX_AMQP_URL: the value has scheme "https"; want amqp:// or amqps://`},
		{"amqp garbage", []string{"relay"}, []string{db, "SIDEBOX_AMQP_URL=app:" + password + "@mq"},
			`SIDEBOX_AMQP_URL: the value is not a URL`},
		{"database url garbage", []string{"status"}, []string{"SIDEBOX_DATABASE_URL=host=db password='" + password},
			`SIDEBOX_DATABASE_URL: is not a valid connection string`},
		{"missing database url", []string{"relay"}, []string{mq},
			`SIDEBOX_DATABASE_URL: must be set`},
		{"missing queue", []string{"inbox"}, []string{db, mq},
			`SIDEBOX_INBOX_QUEUE: must be set`},
		{"inbox knobs checked by run with a queue", []string{"run"}, []string{db, mq, "SIDEBOX_INBOX_QUEUE=q", "SIDEBOX_INBOX_PREFETCH=0"},
			`SIDEBOX_INBOX_PREFETCH: must be between 1 and 65535, got 0`},
		{"log level", []string{"relay"}, []string{db, mq, "SIDEBOX_LOG_LEVEL=loud"},
			`SIDEBOX_LOG_LEVEL: must be debug, info, warn or error, got "loud"`},
		{"webhook image", []string{"inject"}, []string{"SIDEBOX_INJECT_TLS_CERT=/c", "SIDEBOX_INJECT_TLS_KEY=/k"},
			`SIDEBOX_INJECT_IMAGE: must be set`},
		{"webhook certificate", []string{"inject"}, []string{"SIDEBOX_INJECT_TLS_CERT=/nonexistent/c", "SIDEBOX_INJECT_TLS_KEY=/nonexistent/k", "SIDEBOX_INJECT_IMAGE=sidebox:1"},
			`SIDEBOX_INJECT_TLS_CERT: `},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, tt.vars, tt.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("want exit 2 and %q, got %s", tt.want, r)
			}
		})
	}

	// Every problem at once, one per line.
	r := run(t, []string{db, mq, "SIDEBOX_BATCH_SIZE=-1", "SIDEBOX_RELAY_WORKERS=many", "SIDEBOX_HTTP_ADDR=nowhere"}, "relay")
	for _, v := range []string{"SIDEBOX_HTTP_ADDR", "SIDEBOX_BATCH_SIZE", "SIDEBOX_RELAY_WORKERS"} {
		if r.code != 2 || !strings.Contains(r.stderr, "\n  "+v+": ") {
			t.Errorf("want exit 2 and a line for %s, got %s", v, r)
		}
	}
}

func TestMigratePrint(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "migrate", "print")
	if r.code != 0 {
		t.Fatal(r)
	}
	for _, want := range []string{"-- outbox/migrations/0001_create_outbox.up.sql, for outbox\n", "CREATE TABLE IF NOT EXISTS outbox (",
		"-- inbox/migrations/0001_create_inbox.up.sql, for inbox\n", "CREATE TABLE IF NOT EXISTS inbox ("} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("migrate print lacks %q", want)
		}
	}
	if strings.Index(r.stdout, "CREATE TABLE IF NOT EXISTS outbox") > strings.Index(r.stdout, "CREATE TABLE IF NOT EXISTS inbox") {
		t.Error("migrate print: inbox before outbox")
	}
	r = run(t, nil, "migrate", "print", "--down")
	if r.code != 0 || !strings.Contains(r.stdout, "DROP TABLE IF EXISTS outbox") ||
		strings.Index(r.stdout, "DROP TABLE IF EXISTS inbox") > strings.Index(r.stdout, "DROP TABLE IF EXISTS outbox") {
		t.Errorf("migrate print --down: %s", r)
	}
}

type report struct {
	Outbox *struct {
		Pending, Retrying, Dead int64
		BlockedKeys             int64    `json:"blocked_keys"`
		OldestPendingAgeSeconds *float64 `json:"oldest_pending_age_seconds"`
	} `json:"outbox"`
	Inbox *struct {
		Unprocessed, Dead *int64
	} `json:"inbox"`
}

func status(t *testing.T, vars []string) (report, string) {
	t.Helper()
	r := run(t, vars, "status", "--json")
	if r.code != 0 {
		t.Fatalf("status --json: %s", r)
	}
	var rep report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("status --json printed %q: %v", r.stdout, err)
	}
	return rep, strings.TrimSpace(r.stdout)
}

func TestMigrateAndStatus(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn), "SIDEBOX_OUTBOX_TABLE=app.outbox"}

	if _, raw := status(t, vars); !strings.HasPrefix(raw, `{"outbox":null,"inbox":null,"tables":`) {
		t.Errorf("status --json before migrate = %s", raw)
	}
	r := run(t, vars, "status")
	if r.code != 0 || strings.Count(r.stdout, "not installed") != 2 {
		t.Errorf("status before migrate: %s", r)
	}

	r = run(t, vars, "migrate", "up")
	if r.code != 0 || !strings.Contains(r.stdout, "outbox table app.outbox: applied 0001_create_outbox") ||
		!strings.Contains(r.stdout, "inbox table inbox: applied 0001_create_inbox") {
		t.Fatalf("migrate up: %s", r)
	}
	r = run(t, vars, "migrate", "up")
	if r.code != 0 || strings.Count(r.stdout, "up to date") != 2 {
		t.Errorf("second migrate up: %s", r)
	}

	rep, raw := status(t, vars)
	if !strings.HasPrefix(raw, `{"outbox":{"pending":0,"retrying":0,"dead":0,"oldest_pending_age_seconds":0,"blocked_keys":0,`+
		`"states":{"pending":{"count":0,"oldest_age_seconds":0},"retrying":{"count":0,"oldest_age_seconds":0},"dead":{"count":0,"oldest_age_seconds":0}}},`+
		`"inbox":{"unprocessed":0,"dead":0},"tables":`) {
		t.Errorf("status --json after migrate = %s", raw)
	}

	for _, q := range []string{
		`INSERT INTO app.outbox (payload, ordering_key) VALUES ('a', 'k'), ('b', 'k'), ('c', NULL)`,
		`INSERT INTO app.outbox (payload, ordering_key, attempts, created_at) VALUES ('d', 'j', 3, now() - interval '1 hour')`,
		`INSERT INTO app.outbox (payload, attempts, dead_at) VALUES ('e', 10, now())`,
		`INSERT INTO inbox (consumer, message_id) VALUES ('c', '1'), ('c', '2')`,
		`INSERT INTO inbox (consumer, message_id, dead_at) VALUES ('c', '3', now())`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rep, raw = status(t, vars)
	o, in := rep.Outbox, rep.Inbox
	if o == nil || in == nil || o.Pending != 3 || o.Retrying != 1 || o.Dead != 1 || o.BlockedKeys != 1 ||
		*o.OldestPendingAgeSeconds < 3600 || *in.Unprocessed != 2 || *in.Dead != 1 {
		t.Errorf("status --json with rows = %s", raw)
	}
	r = run(t, vars, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "outbox (table app.outbox)") || !strings.Contains(r.stdout, "blocked keys") {
		t.Errorf("status: %s", r)
	}

	r = run(t, vars, "migrate", "down")
	if r.code != 1 || !strings.Contains(r.stderr, "app.outbox holds 5 unpublished rows") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("migrate down with rows: want exit 1 naming --force, got %s", r)
	}
	if rep, _ := status(t, vars); rep.Outbox == nil {
		t.Fatal("refused migrate down dropped the outbox")
	}
	r = run(t, vars, "migrate", "down", "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "inbox table inbox: rolled back 0001_create_inbox") ||
		!strings.Contains(r.stdout, "outbox table app.outbox: rolled back 0001_create_outbox") ||
		strings.Index(r.stdout, "inbox table") > strings.Index(r.stdout, "outbox table") {
		t.Errorf("migrate down --force: %s", r)
	}
	if _, raw := status(t, vars); !strings.HasPrefix(raw, `{"outbox":null,"inbox":null,"tables":`) {
		t.Errorf("status --json after down = %s", raw)
	}
	r = run(t, vars, "migrate", "down")
	if r.code != 0 || strings.Count(r.stdout, "nothing to roll back") != 2 {
		t.Errorf("migrate down on empty database: %s", r)
	}
}

// A server that accepts connections and never answers: the connection attempt can
// only end by sidebox's own timeout.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

func TestUnreachableDatabase(t *testing.T) {
	t.Parallel()
	closed := func() string { // a port nobody listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	for _, tt := range []struct {
		name, addr string
		args       []string
	}{
		{"refused", closed, []string{"migrate", "up"}},
		{"refused status", closed, []string{"status", "--json"}},
		{"silent", silentServer(t), []string{"migrate", "up"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			r := run(t, []string{"SIDEBOX_DATABASE_URL=postgres://app:" + password + "@" + tt.addr + "/app?sslmode=disable"}, tt.args...)
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("took %s", took)
			}
			if r.code != 1 || !strings.Contains(r.stderr, "connect to database postgres://app:xxxxx@"+tt.addr) {
				t.Errorf("want exit 1 and the redacted URL, got %s", r)
			}
		})
	}
}

// daemon is a running long-lived sidebox command.
type daemon struct {
	cmd  *exec.Cmd
	addr string // its HTTP address

	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{} // closed when stderr is at EOF
}

// start runs sidebox args with an ephemeral HTTP port and waits for the log line
// saying it serves ("sidebox started", or the webhook's "admission webhook listening").
func start(t *testing.T, vars []string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env(append(vars, "SIDEBOX_HTTP_ADDR=127.0.0.1:0", "SIDEBOX_LOG_LEVEL=debug")...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if out := d.log(); strings.Contains(out, password) {
			t.Errorf("sidebox %v logged the password:\n%s", args, out)
		}
	})
	started := make(chan string, 1)
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.stderr.Write(sc.Bytes())
			d.stderr.WriteByte('\n')
			d.mu.Unlock()
			var line struct {
				Msg        string `json:"msg"`
				HTTPAddr   string `json:"http_addr"`
				InjectAddr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				switch line.Msg {
				case "sidebox started":
					started <- line.HTTPAddr
				case "admission webhook listening":
					started <- line.InjectAddr
				}
			}
		}
	}()
	select {
	case d.addr = <-started:
	case <-d.done:
		_ = cmd.Wait()
		t.Fatalf("sidebox %v exited before starting:\n%s", args, d.log())
	case <-time.After(15 * time.Second):
		t.Fatalf("sidebox %v did not start:\n%s", args, d.log())
	}
	return d
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// get returns the status and body of an endpoint.
func (d *daemon) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + d.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitFor polls path until it answers code with a body containing want.
func (d *daemon) waitFor(t *testing.T, path string, code int, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, body := d.get(t, path)
		if c == code && strings.Contains(body, want) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d %s, want %d with %q; log:\n%s", path, c, body, code, want, d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and returns the exit code.
func (d *daemon) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { <-d.done; exited <- d.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit 20 s after %v; log:\n%s", sig, d.log())
	}
	return d.cmd.ProcessState.ExitCode()
}

// Dependencies that are down at start do not stop the process: it stays alive and
// not ready, and still shuts down cleanly.
func TestDependenciesDownAtStart(t *testing.T) {
	t.Parallel()
	d := start(t, []string{
		"SIDEBOX_DATABASE_URL=postgres://app:" + password + "@127.0.0.1:1/app?sslmode=disable",
		"SIDEBOX_AMQP_URL=amqp://app:" + password + "@127.0.0.1:1/",
	}, "relay")
	if code, _ := d.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	d.waitFor(t, "/readyz", 503, `"postgres":"database unreachable`)
	// The reason shows once the first dial has failed.
	d.waitFor(t, "/readyz", 503, `"rabbitmq":"not connected to RabbitMQ: `)
	if code, body := d.get(t, "/metrics"); code != 200 || !strings.Contains(body, `sidebox_build_info{commit="`+testCommit+`",version="`+testVersion+`"} 1`) ||
		!strings.Contains(body, "go_goroutines") || !strings.Contains(body, `sidebox_up{dependency="postgres"} 0`) {
		t.Errorf("/metrics = %d\n%s", code, body)
	}
	if code := d.stop(t, syscall.SIGINT); code != 0 {
		t.Errorf("exit %d after SIGINT; log:\n%s", code, d.log())
	}
	if !strings.Contains(d.log(), `"drained; exiting"`) {
		t.Errorf("no drained line:\n%s", d.log())
	}
}

// amqpQueue declares a fresh queue on the test broker and returns its name and a
// function counting its ready messages.
func amqpQueue(t *testing.T) (name string, count func() int) {
	t.Helper()
	conn, err := amqp.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name = testenv.Name(t, "cli_test")
	if _, err := ch.QueueDeclare(name, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(name, false, false, false) })
	return name, func() int {
		q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages
	}
}

// SIGTERM while the relay is busy: it finishes the batches in flight and exits 0;
// every row is then either published or still in the outbox, none twice.
func TestRelayDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	queue, queued := amqpQueue(t)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_BATCH_SIZE=50",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	const rows = 3000
	if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, queue, rows); err != nil {
		t.Fatal(err)
	}

	d := start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"relay":"ok"`)
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
	log := d.log()
	if strings.Contains(log, ":guest@") {
		t.Errorf("log shows the AMQP password:\n%s", log)
	}
	for _, want := range []string{`"msg":"starting sidebox"`, `"msg":"shutting down: draining"`, `"msg":"drained; exiting"`, `"SIDEBOX_DATABASE_URL":"postgres://postgres:xxxxx@`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	left := testenv.Count(t, db, `SELECT count(*) FROM outbox`)
	published := queued()
	t.Logf("at SIGTERM: %d rows published, %d left in the outbox", published, left)
	if published+left != rows {
		t.Errorf("%d rows published and %d left in the outbox, want %d in all", published, left, rows)
	}
}

// run waits for tables that do not exist yet, and is ready once `migrate up` made
// them; with a queue configured it also runs the inbox consumer.
func TestRunWaitsForTables(t *testing.T) {
	t.Parallel()
	dsn := testenv.DatabaseURL(t)
	queue, _ := amqpQueue(t)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_INBOX_QUEUE=" + queue,
		"SIDEBOX_STATUS_INTERVAL=100ms",
	}
	d := start(t, vars, "run")
	// The two components look up their tables independently: wait for each verdict.
	d.waitFor(t, "/readyz", 503, "outbox table outbox does not exist; run `sidebox migrate up`")
	d.waitFor(t, "/readyz", 503, "inbox table inbox does not exist")
	if code, _ := d.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	body := d.waitFor(t, "/readyz", 200, `"ready":true`)
	for _, check := range []string{"postgres", "rabbitmq", "relay", "inbox"} {
		if !strings.Contains(body, `"`+check+`":"ok"`) {
			t.Errorf("/readyz lacks check %s: %s", check, body)
		}
	}

	// A message on the queue lands in the inbox table and in the gauge.
	conn, err := amqp.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", queue, false, false, amqp.Publishing{MessageId: "m-1", Body: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "/metrics", 200, `sidebox_inbox_unprocessed{table="inbox"} 1`)
	d.waitFor(t, "/metrics", 200, `sidebox_outbox_pending{table="outbox"} 0`)

	if code := d.stop(t, syscall.SIGTERM); code != 0 || !strings.Contains(d.log(), `"drained; exiting"`) {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
}

func TestInjectServesAndDrains(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sidebox-injector"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	d := start(t, []string{
		"SIDEBOX_INJECT_ADDR=127.0.0.1:0", "SIDEBOX_INJECT_TLS_CERT=" + certFile, "SIDEBOX_INJECT_TLS_KEY=" + keyFile,
		"SIDEBOX_INJECT_IMAGE=ghcr.io/sidebox/sidebox:test",
	}, "inject")
	if code := d.stop(t, syscall.SIGTERM); code != 0 || !strings.Contains(d.log(), `"drained; exiting"`) {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
}
