package cli_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// privateAMQP adds a user with the test password to a private node and returns its URL.
func privateAMQP(t *testing.T, mq *testenv.RabbitMQ) string {
	t.Helper()
	mq.Ctl(t, "add_user", "sidebox", password)
	mq.Ctl(t, "set_permissions", "-p", "/", "sidebox", ".*", ".*", ".*")
	return "amqp://sidebox:" + password + "@" + mq.Addr() + "/"
}

// fillQueue declares a durable queue on the node and puts n persistent messages with
// ids m-1 ... m-n in it, confirmed.
func fillQueue(t *testing.T, url, queue string, n int) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var last *amqp.DeferredConfirmation
	for i := 1; i <= n; i++ {
		last, err = ch.PublishWithDeferredConfirm("", queue, false, false, amqp.Publishing{
			MessageId: fmt.Sprintf("m-%d", i), DeliveryMode: amqp.Persistent, Body: []byte("x"),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n > 0 && !last.Wait() {
		t.Fatal("the broker nacked the test messages")
	}
}

// queueDepth returns a function counting the ready messages of a queue.
func queueDepth(t *testing.T, url, queue string) func() int {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return func() int {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages
	}
}

// waitBlocked waits until RabbitMQ lists a connection whose name starts with prefix as
// blocked: the sidecar published while the alarm holds.
func waitBlocked(t *testing.T, mq *testenv.RabbitMQ, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conns := mq.Connections(t)
		for _, c := range conns {
			if strings.HasPrefix(c.Name, prefix) && c.State == "blocked" {
				return c.Name
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection %q... is blocked: %+v", prefix, conns)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// poll waits until cond holds; what describes the state for the failure message.
func poll(t *testing.T, d *daemon, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %s: %s; log:\n%s", timeout, what(), d.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Defect 5: during a memory alarm RabbitMQ stops reading from connections that publish.
// The inbox consumer must still drain its queue (which is what relieves an alarm), so
// it must not share the relay's connection; the relay waits, burning no attempts, and
// resumes once the alarm is cleared.
func TestRunDrainsInboxDuringMemoryAlarm(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t)
	url := privateAMQP(t, mq)
	db, dsn := testenv.DB(t)
	inboxQueue, target := testenv.Name(t, "alarm_inbox"), testenv.Name(t, "alarm_target")
	const messages, rows = 3000, 300
	fillQueue(t, mq.URL(), inboxQueue, messages)
	fillQueue(t, mq.URL(), target, 0)
	targetDepth := queueDepth(t, mq.URL(), target)

	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + url,
		"SIDEBOX_INBOX_QUEUE=" + inboxQueue,
		"SIDEBOX_PUBLISH_TIMEOUT=2s",
		"SIDEBOX_BATCH_SIZE=50",
		"SIDEBOX_STATUS_INTERVAL=200ms",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, target, rows); err != nil {
		t.Fatal(err)
	}
	// The inbox table appears only once the relay's connection is blocked, so that the
	// consumer starts under the block, whatever the two components' start-up order.
	if _, err := db.Exec(`ALTER TABLE inbox RENAME TO inbox_later`); err != nil {
		t.Fatal(err)
	}
	mq.MemoryAlarm(t, true)

	d := start(t, vars, "run")
	name := waitBlocked(t, mq, "sidebox run")
	t.Logf("connection %q is blocked", name)
	consumers := 0
	for _, c := range mq.Connections(t) {
		if strings.HasPrefix(c.Name, "sidebox run") && strings.HasSuffix(c.Name, " consume") {
			consumers++
			if c.State == "blocked" {
				t.Errorf("the consuming connection %q is blocked", c.Name)
			}
		}
	}
	if consumers != 1 {
		t.Errorf("%d consuming connections, want 1: %+v", consumers, mq.Connections(t))
	}
	if _, err := db.Exec(`ALTER TABLE inbox_later RENAME TO inbox`); err != nil {
		t.Fatal(err)
	}
	stored := func() int { return testenv.Count(t, db, `SELECT count(*) FROM inbox`) }
	poll(t, d, 90*time.Second, func() bool { return stored() == messages },
		func() string {
			return fmt.Sprintf("%d of %d messages stored in the inbox while the alarm holds", stored(), messages)
		})

	// The relay waits: its confirms time out, its rows stay, no attempt is spent.
	poll(t, d, 60*time.Second, func() bool { return strings.Contains(d.log(), "confirms did not arrive in time") },
		func() string { return "no publish timeout logged" })
	burnt := func() int {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE attempts > 0 OR dead_at IS NOT NULL`)
	}
	if n := burnt(); n != 0 {
		t.Errorf("%d outbox rows spent an attempt while the connection was blocked", n)
	}
	for _, want := range []string{`"msg":"RabbitMQ blocked the publishing connection: low on memory"`} {
		if !strings.Contains(d.log(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	d.waitFor(t, "/metrics", 200, `sidebox_rabbitmq_blocked{connection="publish"} 1`)
	d.waitFor(t, "/metrics", 200, `sidebox_up{dependency="rabbitmq"} 1`)

	mq.MemoryAlarm(t, false)
	left := func() int { return testenv.Count(t, db, `SELECT count(*) FROM outbox`) }
	poll(t, d, 120*time.Second, func() bool { return left() == 0 },
		func() string { return fmt.Sprintf("%d outbox rows left after the alarm cleared", left()) })
	if n := targetDepth(); n < rows {
		t.Errorf("%d messages published, want at least %d", n, rows)
	}
	if !strings.Contains(d.log(), `"msg":"RabbitMQ unblocked the publishing connection"`) {
		t.Error("log lacks the unblocking")
	}
	d.waitFor(t, "/metrics", 200, `sidebox_rabbitmq_blocked{connection="publish"} 0`)
	d.waitFor(t, "/readyz", 200, `"ready":true`)
	if code := d.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM; log:\n%s", code, d.log())
	}
	noSecrets(t, "sidebox run log", d.log(), password)
}

// SIGTERM while RabbitMQ blocks the publishing connection: confirms cannot come, so the
// drain must not wait for them past its grace period. The process exits 0 within
// SIDEBOX_SHUTDOWN_TIMEOUT (which it enforces itself: past it, it exits 1), and the
// unconfirmed rows stay in the outbox with no attempt spent.
func TestShutdownWhileBlocked(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t)
	url := privateAMQP(t, mq)
	db, dsn := testenv.DB(t)
	target := testenv.Name(t, "blocked_target")
	fillQueue(t, mq.URL(), target, 0)
	const rows = 300
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + url,
		"SIDEBOX_PUBLISH_TIMEOUT=60s", // far longer than the grace period
		"SIDEBOX_SHUTDOWN_TIMEOUT=10s",
		"SIDEBOX_AMQP_CA_FILE=" + testenv.NewTLS(t).CA, // unused with amqp://: a warning
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	if _, err := db.Exec(`INSERT INTO outbox (routing_key, payload) SELECT $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, target, rows); err != nil {
		t.Fatal(err)
	}
	mq.MemoryAlarm(t, true)
	d := start(t, vars, "relay")
	waitBlocked(t, mq, "sidebox relay")
	code := d.stop(t, syscall.SIGTERM)
	log := d.log()
	if code != 0 || strings.Contains(log, "did not finish") {
		t.Errorf("exit %d after SIGTERM during the block, want 0 within SIDEBOX_SHUTDOWN_TIMEOUT; log:\n%s", code, log)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE attempts > 0 OR dead_at IS NOT NULL`); n != 0 {
		t.Errorf("%d rows spent an attempt", n)
	}
	noSecrets(t, "sidebox relay log", log, password)
	if !strings.Contains(log, "apply to amqps:// URLs only") {
		t.Error("no warning about TLS files without an amqps:// URL")
	}
	t.Logf("%d of %d rows left in the outbox", testenv.Count(t, db, `SELECT count(*) FROM outbox`), rows)
}
