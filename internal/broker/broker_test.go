package broker_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/testenv"
)

// hang fails the test when f does not return within a minute: a guard against a
// test that would otherwise hang, not a timing assertion.
func hang(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s did not return", what)
	}
}

// value reads a gauge.
func value(g prometheus.Gauge) float64 {
	var d dto.Metric
	_ = g.Write(&d)
	return d.GetGauge().GetValue()
}

// While RabbitMQ blocks a connection it reads nothing from it, so the client's
// channel.open is never answered: Channel must still return when its context ends,
// and Run must close the connection at once when its own ends.
func TestBlockedConnection(t *testing.T) {
	t.Parallel()
	mq := testenv.StartRabbitMQ(t)
	m := metrics.New(prometheus.NewRegistry())
	b := broker.New([]string{mq.URL()}, broker.Config{Name: "broker-test", Role: broker.RolePublish}, zaptest.NewLogger(t), m)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan struct{})
	go func() { defer close(ran); b.Run(ctx) }()

	ch, err := b.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	queue := testenv.Name(t, "blocked")
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	up := m.Up.WithLabelValues(metrics.DependencyRabbitMQ)
	blocked := m.RabbitMQBlocked.WithLabelValues(broker.RolePublish)
	if value(up) != 1 || value(blocked) != 0 {
		t.Errorf("connected: sidebox_up %v, blocked %v", value(up), value(blocked))
	}

	mq.MemoryAlarm(t, true)
	if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "the block", func() bool { return b.Blocked() != "" })
	if b.Blocked() != "low on memory" || value(blocked) != 1 || !b.Ready() {
		t.Errorf("blocked: reason %q, gauge %v, ready %v", b.Blocked(), value(blocked), b.Ready())
	}

	hang(t, "Channel on a blocked connection", func() {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := b.Channel(cctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Channel on a blocked connection: %v, want the context's deadline", err)
		}
	})

	stop()
	hang(t, "Run on a blocked connection", func() { <-ran })
	if b.Ready() || value(up) != 0 || value(blocked) != 0 {
		t.Errorf("after Run: ready %v, sidebox_up %v, blocked %v", b.Ready(), value(up), value(blocked))
	}
}

// Joined brokers are one dependency: sidebox_up is 1 only while all are connected,
// and Problem names the missing connection's dial error.
func TestJoinedBrokers(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "amqp://guest:s3cret@" + ln.Addr().String() + "/"
	_ = ln.Close()

	m := metrics.New(prometheus.NewRegistry())
	log := zaptest.NewLogger(t)
	good := broker.New([]string{testenv.AMQPURL(t)}, broker.Config{Role: broker.RolePublish}, log, m)
	bad := broker.New([]string{refused}, broker.Config{Role: broker.RoleConsume}, log, m)
	broker.Join(good, bad)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan struct{}, 2)
	for _, b := range []*broker.Broker{good, bad} {
		go func() { b.Run(ctx); done <- struct{}{} }()
	}
	testenv.Eventually(t, 60*time.Second, "the good connection and the bad one's error", func() bool { return good.Ready() && bad.Problem() != "not connected to RabbitMQ" })
	up := m.Up.WithLabelValues(metrics.DependencyRabbitMQ)
	if v := value(up); v != 0 {
		t.Errorf("sidebox_up = %v with one of two connections, want 0", v)
	}
	if p := bad.Problem(); p == "" || good.Problem() != "" {
		t.Errorf("problems: good %q, bad %q", good.Problem(), p)
	} else if want := "not connected to RabbitMQ: "; p[:len(want)] != want {
		t.Errorf("bad.Problem() = %q", p)
	}
	stop()
	<-done
	<-done
}
