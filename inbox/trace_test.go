package inbox

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidebox/sidebox/internal/testenv"
)

const (
	testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testTracestate  = "vendor=abc"
)

func attrs(s tracetest.SpanStub) map[attribute.Key]string {
	m := map[attribute.Key]string{}
	for _, a := range s.Attributes {
		m[a.Key] = a.Value.String()
	}
	return m
}

// isCreation reports whether sc is the test's creation context.
func isCreation(sc trace.SpanContext) bool {
	return sc.TraceID().String() == "4bf92f3577b34da6a3ce929d0e0e4736" && sc.SpanID().String() == "00f067aa0ba902b7" &&
		sc.TraceState().String() == testTracestate
}

// The consumer stores traceparent and tracestate with the other headers and records a
// receive span under them; the processor hands the handler a context carrying them,
// as the process span's parent when tracing is on.
func TestTraceContextThroughTheInbox(t *testing.T) {
	db, _, _ := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "trace")
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	cfg := ConsumerConfig{Queue: queue, BatchWait: time.Millisecond}
	startConsumerWith(t, db, url, cfg, func(c *Consumer) { c.trace = newReceiveTracer(tp, c.cfg) })
	publish(t, conn, queue,
		amqp.Publishing{MessageId: "traced", Body: []byte("x"), Headers: amqp.Table{"traceparent": testTraceparent, "tracestate": testTracestate}},
		amqp.Publishing{MessageId: "plain", Body: []byte("y")})
	testenv.Eventually(t, 20*time.Second, "both messages stored", func() bool {
		return countRows(t, db, `SELECT count(*) FROM inbox`) == 2
	})

	var tp1, ts1 string
	if err := db.QueryRow(`SELECT headers->>'traceparent', headers->>'tracestate' FROM inbox WHERE message_id = 'traced'`).Scan(&tp1, &ts1); err != nil {
		t.Fatal(err)
	}
	if tp1 != testTraceparent || ts1 != testTracestate {
		t.Errorf("stored traceparent %q, tracestate %q; want the delivery's", tp1, ts1)
	}

	testenv.Eventually(t, 10*time.Second, "two receive spans", func() bool { return len(exp.GetSpans()) == 2 })
	for _, sp := range exp.GetSpans() {
		a := attrs(sp)
		if sp.Name != "receive" || sp.SpanKind != trace.SpanKindConsumer || a["messaging.operation.type"] != "receive" ||
			a["messaging.system"] != "rabbitmq" || a["messaging.rabbitmq.destination.routing_key"] != queue || a["sidebox.inbox.queue"] != queue {
			t.Errorf("receive span %q kind %v attributes %v", sp.Name, sp.SpanKind, a)
		}
		switch a["messaging.message.id"] {
		case "traced":
			if !isCreation(sp.Parent) || len(sp.Links) != 1 || !isCreation(sp.Links[0].SpanContext) {
				t.Errorf("receive span of the traced message: parent %v, links %v; want the delivery's context", sp.Parent, sp.Links)
			}
		case "plain":
			if sp.Parent.IsValid() || len(sp.Links) != 0 {
				t.Errorf("receive span of a message without trace context: parent %v, links %v", sp.Parent, sp.Links)
			}
		default:
			t.Errorf("receive span of message %q", a["messaging.message.id"])
		}
	}
	exp.Reset()

	// Tracing off: the handler's context carries the creation context itself.
	seen := map[string]trace.SpanContext{}
	handler := func(ctx context.Context, _ *sql.Tx, msg Message) error {
		seen[msg.MessageID] = trace.SpanContextFromContext(ctx)
		if msg.MessageID == "traced" && msg.Attempts == 0 {
			return errors.New("first attempt fails")
		}
		return nil
	}
	pcfg := ProcessorConfig{Consumer: queue, RetryBackoff: time.Millisecond, RetryBackoffMax: time.Millisecond}
	p := newProcessor(t, db, pcfg, handler)
	drain(t, db, p)
	if sc := seen["traced"]; !isCreation(sc) || !sc.IsRemote() {
		t.Errorf("handler context of the traced message: %v, want the stored traceparent", sc)
	}
	if sc := seen["plain"]; sc.IsValid() {
		t.Errorf("handler context of a message without trace context: %v", sc)
	}

	// Tracing on: the process span, a child of the creation context.
	if _, err := db.Exec(`UPDATE inbox SET processed_at = NULL, attempts = 0`); err != nil {
		t.Fatal(err)
	}
	clear(seen)
	p, err := NewProcessor(db, pcfg, handler, WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, db, p)
	spans := exp.GetSpans()
	if len(spans) != 3 { // traced fails once
		t.Fatalf("%d process spans, want 3", len(spans))
	}
	failed := 0
	for _, sp := range spans {
		a := attrs(sp)
		id := a["messaging.message.id"]
		if sp.Name != "process" || sp.SpanKind != trace.SpanKindConsumer || a["messaging.operation.type"] != "process" || a["sidebox.inbox.consumer"] != queue {
			t.Errorf("process span %q kind %v attributes %v", sp.Name, sp.SpanKind, a)
		}
		if sp.SpanContext.SpanID() != seen[id].SpanID() && sp.Status.Code != codes.Error {
			t.Errorf("the handler of %s did not get its process span", id)
		}
		if sp.Status.Code == codes.Error {
			failed++
			if id != "traced" || a["error.type"] != "handler_failed" || sp.Status.Description != "first attempt fails" {
				t.Errorf("failed process span of %s: %v %v", id, a, sp.Status)
			}
		}
		if id == "traced" && (!isCreation(sp.Parent) || len(sp.Links) != 1 || !isCreation(sp.Links[0].SpanContext)) {
			t.Errorf("process span of the traced message: parent %v, links %v; want the stored context", sp.Parent, sp.Links)
		}
		if id == "plain" && sp.Parent.IsValid() {
			t.Errorf("process span of a message without trace context has parent %v", sp.Parent)
		}
	}
	if failed != 1 {
		t.Errorf("%d failed process spans, want 1", failed)
	}
}

// Tracing off costs the consumer and the processor no allocation; a message without a
// traceparent costs the processor none either.
func TestInboxTracingOffAllocatesNothing(t *testing.T) {
	var rt *receiveTracer // what NewConsumer sets without WithTracerProvider
	b := &batch{deliveries: make([]amqp.Delivery, 100)}
	if n := testing.AllocsPerRun(100, func() { _ = rt.stored(b, nil) }); n != 0 {
		t.Errorf("consumer: %v allocations per batch with tracing off, want 0", n)
	}
	p := &Processor{handler: func(context.Context, *sql.Tx, Message) error { return nil }}
	msg := &Message{MessageID: "m", Headers: []byte(`{"x-outbox-seq": 12, "x-ordering-key": "k", "source": "orders"}`)}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { _ = p.callTraced(ctx, nil, msg) }); n != 0 {
		t.Errorf("processor: %v allocations per message with tracing off, want 0", n)
	}
}
