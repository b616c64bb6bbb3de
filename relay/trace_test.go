package relay

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// A service's trace context written into the row travels unchanged, and the relay's
// publish span is its child and links to it; a row without one gets the publish span's
// context as its creation context.
func TestPublishSpanContinuesTheRowsTraceContext(t *testing.T) {
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	const (
		traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		tracestate  = "vendor=abc"
	)
	ctx := context.Background()
	withCtxID, err := outbox.Write(ctx, db, outbox.Message{Exchange: exchange, RoutingKey: "k", Payload: []byte("{}"),
		Headers: map[string]any{"traceparent": traceparent, "tracestate": tracestate, "other": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	withoutID, err := outbox.Write(ctx, db, outbox.Message{Exchange: exchange, RoutingKey: "k", Payload: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	withCtx, without := withCtxID.String(), withoutID.String()

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	startRelay(t, db, dsn, url, testConfig(table), func(r *Relay) { r.trace = newTracer(tp) })
	s.waitDistinct(t, 2, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "two publish spans", func() bool { return len(exp.GetSpans()) >= 2 })

	spans := map[string]tracetest.SpanStub{}
	for _, sp := range exp.GetSpans() {
		for _, a := range sp.Attributes {
			if a.Key == "messaging.message.id" {
				spans[a.Value.AsString()] = sp
			}
		}
	}
	msgs := map[string]amqp.Delivery{}
	for _, m := range s.messages() {
		msgs[m.MessageId] = m.Delivery
	}

	// The row's own context: unchanged on the wire, parent of and linked from the span.
	m := msgs[withCtx]
	if m.Headers["traceparent"] != traceparent || m.Headers["tracestate"] != tracestate || m.Headers["other"] != "x" {
		t.Errorf("headers on the wire = %v, want the row's traceparent and tracestate unchanged", m.Headers)
	}
	sp, ok := spans[withCtx]
	if !ok {
		t.Fatalf("no span for message %s", withCtx)
	}
	creation := sp.Parent
	if sp.SpanKind != trace.SpanKindProducer || sp.Name != "publish "+exchange {
		t.Errorf("span %q kind %v, want %q producer", sp.Name, sp.SpanKind, "publish "+exchange)
	}
	if creation.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || creation.SpanID().String() != "00f067aa0ba902b7" || !creation.IsRemote() {
		t.Errorf("span parent = %v, want the row's traceparent", creation)
	}
	if sp.SpanContext.TraceID() != creation.TraceID() {
		t.Errorf("span trace %v, want the row's", sp.SpanContext.TraceID())
	}
	if len(sp.Links) != 1 || !sp.Links[0].SpanContext.Equal(creation) || sp.Links[0].SpanContext.TraceState().String() != tracestate {
		t.Errorf("span links = %v, want one to the row's context with its tracestate", sp.Links)
	}
	want := map[attribute.Key]string{
		"messaging.system":                           "rabbitmq",
		"messaging.operation.type":                   "send",
		"messaging.operation.name":                   "publish",
		"messaging.destination.name":                 exchange,
		"messaging.rabbitmq.destination.routing_key": "k",
		"messaging.message.id":                       withCtx,
	}
	got := map[attribute.Key]string{}
	for _, a := range sp.Attributes {
		got[a.Key] = a.Value.String()
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, got[k], v)
		}
	}
	if sp.Status.Code != codes.Unset {
		t.Errorf("status of a confirmed publish = %v", sp.Status)
	}

	// A row without: a root span, whose context the message carries.
	sp, ok = spans[without]
	if !ok {
		t.Fatalf("no span for message %s", without)
	}
	if sp.Parent.IsValid() || len(sp.Links) != 0 {
		t.Errorf("span of a row without trace context: parent %v, links %v; want a root span", sp.Parent, sp.Links)
	}
	wantTP := "00-" + sp.SpanContext.TraceID().String() + "-" + sp.SpanContext.SpanID().String() + "-01"
	if got := msgs[without].Headers["traceparent"]; got != wantTP {
		t.Errorf("traceparent on the wire = %v, want the publish span's %s", got, wantTP)
	}
}

// A failed publish shows on its span.
func TestPublishSpanOfAnUnroutableRow(t *testing.T) {
	db, dsn, table, url, exchange, _ := setup(t, "outbox", "k")
	id, err := outbox.Write(context.Background(), db, outbox.Message{Exchange: exchange, RoutingKey: "nowhere", Payload: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	startRelay(t, db, dsn, url, testConfig(table), func(r *Relay) { r.trace = newTracer(tp) })
	testenv.Eventually(t, 20*time.Second, "a publish span", func() bool { return len(exp.GetSpans()) >= 1 })
	sp := exp.GetSpans()[0]
	if sp.Status.Code != codes.Error {
		t.Errorf("status = %v, want an error", sp.Status)
	}
	var errType, msgID string
	for _, a := range sp.Attributes {
		switch a.Key {
		case "error.type":
			errType = a.Value.AsString()
		case "messaging.message.id":
			msgID = a.Value.AsString()
		}
	}
	if errType != "returned" || msgID != id.String() {
		t.Errorf("error.type %q, message id %q; want returned, %s", errType, msgID, id)
	}
}

func TestWithTracerProvider(t *testing.T) {
	db, _ := testenv.DB(t)
	cfg := Config{AMQPURLs: []string{"amqp://localhost"}}
	r, err := New(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.trace != nil {
		t.Error("a relay without WithTracerProvider traces")
	}
	r, err = New(db, cfg, WithTracerProvider(sdktrace.NewTracerProvider()))
	if err != nil {
		t.Fatal(err)
	}
	if r.trace == nil {
		t.Error("WithTracerProvider: no tracer")
	}
}

// Tracing off costs no allocation on the publish path.
func TestTracingOffAllocatesNothing(t *testing.T) {
	var tr *tracer // what New sets without WithTracerProvider
	rows := make([]row, 100)
	msgs := make([]amqp.Publishing, 100)
	res := make([]result, 100)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		spans := tr.publishing(ctx, rows, msgs, res, 0)
		spans.end(res)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch with tracing off, want 0", allocs)
	}
}

// The publish path's tracing cost per batch of 100 rows, off and on (sampled, spans
// dropped by a no-op processor).
func BenchmarkPublishSpans(b *testing.B) {
	rows := make([]row, 100)
	for i := range rows {
		rows[i] = row{id: "0190d3f4-8f5e-7c3a-9b1e-2a4c6e8f0a1b", exchange: "orders", routingKey: "order.created", size: 100}
	}
	msgs := make([]amqp.Publishing, len(rows))
	for i := range msgs { // the row's own context: nothing injected, the table is reused
		msgs[i].Headers = amqp.Table{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	}
	res := make([]result, len(rows))
	ctx := context.Background()
	for _, c := range []struct {
		name string
		tr   *tracer
	}{{"off", nil}, {"on", newTracer(sdktrace.NewTracerProvider())}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.tr.publishing(ctx, rows, msgs, res, 0).end(res)
			}
		})
	}
}
