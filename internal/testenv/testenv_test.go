package testenv

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestName(t *testing.T) {
	a, b := Name(t, "Orders"), Name(t, "orders")
	if a == b {
		t.Fatalf("two names are equal: %s", a)
	}
	if !regexp.MustCompile(`^orders_[0-9a-f]{12}$`).MatchString(a) {
		t.Fatalf("Name = %q, want orders_<12 hex digits>", a)
	}
	for _, p := range []string{"", "9x", "a-b", "Orders", strings.Repeat("a", 51)} {
		if validPrefix(p) {
			t.Errorf("validPrefix(%q) = true", p)
		}
	}
}

func TestRedacted(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:s3cret@h:5672/":                           "amqp://guest:xxxxx@h:5672/",
		"postgres://u:p%40ss@h/db?sslmode=disable":              "postgres://u:xxxxx@h/db?sslmode=disable",
		"postgres://u@h/db?sslpassword=k3y":                     "postgres://u@h/db?sslpassword=xxxxx",
		"host=h user=u password=s3cret dbname=d":                "host=h user=u password=xxxxx dbname=d",
		"host=h password='s3 cr\\'et' sslpassword=k3y dbname=d": "host=h password=xxxxx sslpassword=xxxxx dbname=d",
	} {
		if got := Redacted(in); got != want {
			t.Errorf("Redacted(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUpstreamAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5672":                 "127.0.0.1:5672",
		"amqp://guest:guest@127.0.0.1/":  "127.0.0.1:5672",
		"amqps://rabbit.example/vhost":   "rabbit.example:5671",
		"postgres://u@db:6543/x":         "db:6543",
		"postgresql://u@[::1]/x":         "[::1]:5432",
		"amqp://guest:guest@h:15672/vh/": "h:15672",
	} {
		got, err := upstreamAddr(in)
		if err != nil || got != want {
			t.Errorf("upstreamAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"localhost", "http://h/"} {
		if _, err := upstreamAddr(in); err == nil {
			t.Errorf("upstreamAddr(%q): no error", in)
		}
	}
}

func TestDatabaseURL(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("fresh", func(t *testing.T) {
		db, u := DB(t)
		if err := db.QueryRow("SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "sidebox_test_") || !strings.Contains(u, name) {
			t.Fatalf("database %q, URL %s", name, Redacted(u))
		}
		var tables int
		if err := db.QueryRow("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
			t.Fatal(err)
		}
		if tables != 0 {
			t.Fatalf("fresh database has %d tables", tables)
		}
		if _, err := db.Exec("CREATE TABLE outbox (id int)"); err != nil {
			t.Fatal(err)
		}
	})

	// The subtest's cleanup dropped its database.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, server, err := openServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var n int
	if err := admin.QueryRowContext(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("database %s still exists on %s", name, Redacted(server))
	}
}

func TestPostgresStopStart(t *testing.T) {
	t.Parallel()
	began := time.Now()
	pg := StartPostgres(t)
	t.Logf("private PostgreSQL on %s ready in %s", pg.Addr(), time.Since(began).Round(time.Millisecond))

	db, err := sql.Open("postgres", pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	Exec(t, db, "CREATE TABLE kept (n int)")
	Exec(t, db, "INSERT INTO kept VALUES (1)")

	pg.Stop(t)
	assertRefused(t, pg.Addr())
	if err := db.Ping(); err == nil {
		t.Fatal("ping succeeded while the server is stopped")
	}

	began = time.Now()
	pg.Start(t)
	t.Logf("restarted in %s", time.Since(began).Round(time.Millisecond))
	assertRows(t, db, 1)

	// A killed server keeps what it committed.
	Exec(t, db, "INSERT INTO kept VALUES (2)")
	pg.Kill(t)
	assertRefused(t, pg.Addr())
	pg.Start(t)
	assertRows(t, db, 2)

	pg.Restart(t)
	assertRows(t, db, 2)
}

func TestRabbitMQStopStart(t *testing.T) {
	t.Parallel()
	began := time.Now()
	rmq := StartRabbitMQ(t)
	t.Logf("private RabbitMQ on %s ready in %s", rmq.Addr(), time.Since(began).Round(time.Millisecond))

	queue := Name(t, "kept")
	conn, ch := amqpChannel(t, rmq.URL())
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, queue, "first")

	began = time.Now()
	rmq.Stop(t)
	t.Logf("stopped in %s", time.Since(began).Round(time.Millisecond))
	assertRefused(t, rmq.Addr())
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the client connection stayed open after Stop")
	}

	began = time.Now()
	rmq.Start(t)
	t.Logf("restarted in %s", time.Since(began).Round(time.Millisecond))
	_, ch = amqpChannel(t, rmq.URL())
	assertMessage(t, ch, queue, "first")

	// A killed node keeps what it confirmed.
	publishConfirmed(t, ch, queue, "second")
	rmq.Kill(t)
	assertRefused(t, rmq.Addr())
	began = time.Now()
	rmq.Start(t)
	t.Logf("started after kill in %s", time.Since(began).Round(time.Millisecond))
	_, ch = amqpChannel(t, rmq.URL())
	assertMessage(t, ch, queue, "second")
}

func TestProxyCutClosesAMQPConnection(t *testing.T) {
	t.Parallel()
	upstream := AMQPURL(t)
	p := Proxy(t, upstream)
	conn, _ := amqpChannel(t, p.URL(upstream))
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	p.Cut(t)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the AMQP connection stayed open after Cut")
	}
	assertRefused(t, p.Addr())

	p.Restore(t)
	amqpChannel(t, p.URL(upstream))
}

func TestProxyStall(t *testing.T) {
	t.Parallel()
	p := Proxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	assertEcho(t, c, r, "before\n")

	p.Stall(t)
	if _, err := io.WriteString(c, "during\n"); err != nil {
		t.Fatal(err)
	}
	// Nothing signals that no byte arrives: a short read deadline is the assertion.
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if line, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during stall = %q, %v; want a timeout", line, err)
	}

	p.Restore(t)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("stalled connection after Restore: %v, want EOF", err)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	assertEcho(t, c2, bufio.NewReader(c2), "after\n")
}

// echoServer serves a line echo on a free port until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().String()
}

func assertEcho(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("echo = %q, %v; want %q", got, err, line)
	}
}

func assertRows(t *testing.T, db *sql.DB, want int) {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM kept").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("kept has %d rows, want %d", n, want)
	}
}

// assertRefused checks that addr refuses connections within a few seconds: a stopped
// listener may close a moment after the connections it served.
func assertRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			_ = c.Close()
			time.Sleep(20 * time.Millisecond) // no signal to wait for: the listener's close is internal to the proxy
			continue
		}
		if !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("dial %s: %v, want connection refused", addr, err)
		}
		return
	}
	t.Fatalf("%s still accepts connections", addr)
}

// amqpChannel dials url and opens a channel; both are closed in t.Cleanup.
func amqpChannel(t *testing.T, url string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", Redacted(url), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return conn, ch
}

// publishConfirmed publishes a persistent message to queue and waits for its confirm.
func publishConfirmed(t *testing.T, ch *amqp.Channel, queue, body string) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		Body:         []byte(body),
	})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("confirm of %q: ack %v, %v", body, ok, err)
	}
}

// assertMessage gets one message from queue and checks its body.
func assertMessage(t *testing.T, ch *amqp.Channel, queue, body string) {
	t.Helper()
	msg, ok, err := ch.Get(queue, true)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || string(msg.Body) != body {
		t.Fatalf("get from %s = %q (ok %v), want %q", queue, msg.Body, ok, body)
	}
}

// PgBouncer pools: in transaction mode one client connection's transactions run on
// whichever server connection is free, in session mode always on the same one.
func TestPgBouncerPoolModes(t *testing.T) {
	dsn := DatabaseURL(t)
	for _, mode := range []string{PoolTransaction, PoolSession} {
		t.Run(mode, func(t *testing.T) {
			b := StartPgBouncer(t, dsn, mode)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			db, err := sql.Open("postgres", b.URL(dsn))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			pid := func(c *sql.Conn) int {
				var p int
				if err := c.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&p); err != nil {
					t.Fatalf("through pgbouncer: %v\n%s", err, b.Log())
				}
				return p
			}
			c1, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c1.Close()
			c2, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			first := pid(c2)
			// c1 holds a server connection in a transaction; c2's next statement runs
			// on another one, in transaction mode.
			if _, err := c1.ExecContext(ctx, `BEGIN`); err != nil {
				t.Fatal(err)
			}
			held := pid(c1)
			second := pid(c2)
			if _, err := c1.ExecContext(ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
			moved := held == first || second != first
			if moved != (mode == PoolTransaction) {
				t.Errorf("%s mode: client 2 ran on backends %d then %d while client 1 held %d", mode, first, second, held)
			}
		})
	}
}
