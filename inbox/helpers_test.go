package inbox

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/testenv"
)

// migrated opens a fresh database with the inbox table t migrated.
func migrated(t *testing.T, table string) (*sql.DB, string, string) {
	t.Helper()
	db, url := testenv.Migrated(t, Migrate, table)
	return db, url, table
}

// amqpConn dials the test broker for the test's own declarations and publishes.
func amqpConn(t testing.TB, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial RabbitMQ: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func channel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// declareQueue declares a durable queue that is deleted when the test ends.
func declareQueue(t *testing.T, conn *amqp.Connection, name string, args amqp.Table) {
	t.Helper()
	ch := channel(t, conn)
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatalf("declare queue %s: %v", name, err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(name, false, false, false)
			_ = ch.Close()
		}
	})
}

// testQueue dials the test broker and declares a fresh queue named after prefix.
func testQueue(t *testing.T, prefix string) (url string, conn *amqp.Connection, queue string) {
	t.Helper()
	url = testenv.AMQPURL(t)
	conn = amqpConn(t, url)
	queue = testenv.Name(t, prefix)
	declareQueue(t, conn, queue, nil)
	return url, conn, queue
}

// publish sends msgs to the default exchange with routing key queue and waits for the
// broker's confirms.
func publish(t *testing.T, conn *amqp.Connection, queue string, msgs ...amqp.Publishing) {
	t.Helper()
	ch := channel(t, conn)
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var confirms []*amqp.DeferredConfirmation
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, m)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
		}
	}
}

// numbered returns n messages with ids prefix0, prefix1 ... and the body "x".
func numbered(prefix string, n int) []amqp.Publishing {
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = amqp.Publishing{MessageId: prefix + strconv.Itoa(i), Body: []byte("x")}
	}
	return msgs
}

// depth returns the number of ready messages in queue (unacknowledged ones not included).
func depth(t *testing.T, conn *amqp.Connection, queue string) int {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// startBroker runs a connection manager until the test ends.
func startBroker(t testing.TB, url string, log *zap.Logger) *broker.Broker {
	t.Helper()
	b := broker.New([]string{url}, broker.Config{Name: "sidebox-inbox-test"}, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

// running is a Consumer started in the background.
type running struct {
	c      *Consumer
	m      *metrics.Metrics
	cancel context.CancelFunc
	once   sync.Once
	done   chan error
}

// startConsumer runs a Consumer on a broker connection of its own; it is stopped (and
// must return nil) at the latest when the test ends.
func startConsumer(t testing.TB, db *sql.DB, amqpURL string, cfg ConsumerConfig) *running {
	t.Helper()
	return startConsumerWith(t, db, amqpURL, cfg, nil)
}

// startConsumerWith is startConsumer with a chance to set test hooks before Run.
func startConsumerWith(t testing.TB, db *sql.DB, amqpURL string, cfg ConsumerConfig, setup func(*Consumer)) *running {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	b := startBroker(t, amqpURL, log)
	c, err := NewConsumer(db, cfg, WithConnection(b), WithLogger(log), WithRegisterer(reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if setup != nil {
		setup(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, m: m, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	testenv.Eventually(t, 20*time.Second, "the consumer to be ready", c.Ready)
	return r
}

// stop cancels the consumer and waits for Run to return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Consumer.Run returned %v, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Consumer.Run did not return after cancel")
		}
	})
}

func (r *running) count(c *prometheus.CounterVec) int {
	return counterValue(c.WithLabelValues(r.c.cfg.Queue))
}

func counterValue(c prometheus.Counter) int {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetCounter().GetValue())
}

func (r *running) received() int   { return r.count(r.m.InboxReceived) }
func (r *running) stored() int     { return r.count(r.m.InboxStored) }
func (r *running) duplicates() int { return r.count(r.m.InboxDuplicates) }
func (r *running) rejected(reason string) int {
	return counterValue(r.m.InboxRejected.WithLabelValues(r.c.cfg.Queue, reason))
}

func countRows(t *testing.T, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func openDB(url string) (*sql.DB, error) {
	db, err := sql.Open("postgres", url)
	if err != nil {
		return nil, err
	}
	return db, db.Ping()
}

// runUntilKilled runs the test function helper in a child process (with
// SIDEBOX_INBOX_HELPER=name, HELPER_DB=dbURL and env), requires that it died by SIGKILL,
// and waits until its database sessions ended: a statement the dead process had sent may
// still commit until then.
func runUntilKilled(t *testing.T, db *sql.DB, dbURL, helper, name string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), append([]string{"SIDEBOX_INBOX_HELPER=" + name, "HELPER_DB=" + withAppName(dbURL)}, env...)...)
	out, err := cmd.CombinedOutput()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die by SIGKILL: %v\n%s", err, out)
	}
	testenv.Eventually(t, 10*time.Second, "the killed process's database sessions to end", func() bool {
		return countRows(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'inbox_helper'`) == 0
	})
}

// withAppName tags a helper process's database sessions, so that a test can wait for
// them to end.
func withAppName(dbURL string) string {
	if strings.Contains(dbURL, "://") {
		sep := "?"
		if strings.Contains(dbURL, "?") {
			sep = "&"
		}
		return dbURL + sep + "application_name=inbox_helper"
	}
	return dbURL + " application_name=inbox_helper"
}
