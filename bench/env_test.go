package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/relay"
)

// payloadSize is the body size of every message in the benchmarks.
const payloadSize = 256

// env is one benchmark's fresh database and the shared broker.
type env struct {
	tb      testing.TB
	dbURL   string
	amqpURL string
	db      *sql.DB // the application's connections: setup, writers, checks
	log     *zap.Logger
	load    string // load average when the benchmark started
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	db, dbURL := testenv.DB(tb)
	return &env{tb: tb, dbURL: dbURL, amqpURL: testenv.AMQPURL(tb), db: db, log: zap.NewNop(), load: loadAverage()}
}

// sidecarPool opens the pool that the relay or the inbox consumer runs on, as the sidecar
// opens it (internal/sidecar/sidecar.go: pg.TunePool with the default worker counts): the
// pool's settings decide how often connections are opened, and with them the relay's
// latency.
func (e *env) sidecarPool() *sql.DB {
	e.tb.Helper()
	db, err := sql.Open("postgres", e.dbURL)
	if err != nil {
		e.tb.Fatalf("open the sidecar's pool: %v", err)
	}
	pg.TunePool(db, pg.SidecarIdleConns(relay.DefaultWorkers, inbox.DefaultWorkers))
	e.tb.Cleanup(func() { _ = db.Close() })
	return db
}

// exec runs statements on the benchmark's database, failing the benchmark on error.
func (e *env) exec(ctx context.Context, query string, args ...any) {
	e.tb.Helper()
	if _, err := e.db.ExecContext(ctx, query, args...); err != nil {
		e.tb.Fatalf("%s: %v", firstLine(query), err)
	}
}

// dial opens an AMQP connection of the benchmark itself (publisher or consumer), closed
// at cleanup. Each role gets its own connection, as separate processes would have.
func (e *env) dial(name string) *amqp.Connection {
	e.tb.Helper()
	conn, err := amqp.DialConfig(e.amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": "sidebox-bench-" + name}})
	if err != nil {
		e.tb.Fatalf("connect to RabbitMQ: %v", err)
	}
	e.tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// queue declares a durable queue with a unique name and deletes it at cleanup.
func (e *env) queue(conn *amqp.Connection, prefix string) string {
	e.tb.Helper()
	ch, err := conn.Channel()
	if err != nil {
		e.tb.Fatalf("open channel: %v", err)
	}
	defer ch.Close()
	name := testenv.Name(e.tb, prefix)
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		e.tb.Fatalf("declare queue %s: %v", name, err)
	}
	e.tb.Cleanup(func() { e.deleteQueue(name) })
	return name
}

func (e *env) deleteQueue(name string) {
	conn, err := amqp.Dial(e.amqpURL)
	if err != nil {
		e.tb.Errorf("delete queue %s: %v", name, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		e.tb.Errorf("delete queue %s: %v", name, err)
		return
	}
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		e.tb.Errorf("delete queue %s: %v", name, err)
	}
}

// queueDepth returns the ready messages of queue.
func queueDepth(conn *amqp.Connection, queue string) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("inspect queue %s: %w", queue, err)
	}
	return q.Messages, nil
}

// startBroker runs a sidebox broker connection, the one the relay or the inbox uses, until
// cleanup, and waits until it is connected.
func (e *env) startBroker(m *metrics.Metrics) *broker.Broker {
	e.tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	brk := broker.New([]string{e.amqpURL}, broker.Config{Name: "sidebox-bench"}, e.log, m)
	done := make(chan struct{})
	go func() {
		defer close(done)
		brk.Run(ctx)
	}()
	e.tb.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for !brk.Ready() {
		if time.Now().After(deadline) {
			e.tb.Fatalf("sidebox broker connection not ready after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return brk
}

func newMetrics() (*metrics.Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return metrics.New(reg), reg
}

// metricSample is a counter's value or a histogram's count and sum.
type metricSample struct {
	value, sum float64
	count      uint64
}

// sample reads the series of metric name whose label has value.
func sample(reg *prometheus.Registry, name, label, value string) (metricSample, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return metricSample{}, fmt.Errorf("gather metrics: %w", err)
	}
	var s metricSample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					s.value += mt.GetCounter().GetValue()
					s.count += mt.GetHistogram().GetSampleCount()
					s.sum += mt.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return s, nil
}

// counterValue reads one counter.
func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	_ = c.Write(&d) // a counter's Write does not fail
	return d.GetCounter().GetValue()
}

// payload returns the 256-byte body of message i: printable, different per message.
func payload(i int) []byte {
	b := make([]byte, payloadSize)
	s := fmt.Sprintf("%08x", i)
	for j := range b {
		b[j] = s[j%len(s)]
	}
	return b
}

// messageIDs returns n random message IDs.
func messageIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	return ids
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	return s
}

// waitFor polls cond every interval until it is true, ctx is done, or cond fails.
func waitFor(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// noteLoad adds the machine's load at the start and the end of the benchmark to r.
func (e *env) noteLoad(r *report) {
	r.note("Machine: %d cores shared with PostgreSQL and RabbitMQ; 1-minute load average %s at the start, %s at the end.",
		runtime.NumCPU(), e.load, loadAverage())
}

// loadAverage returns the machine's 1-minute load average, to show in the reports how
// busy the machine was (PostgreSQL and RabbitMQ share it with the benchmark).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}
