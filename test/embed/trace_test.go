package embed_test

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// A service writes its request's trace context into the outbox row; it arrives in the
// inbox processor's handler context, and the relay's publish span, the consumer's
// receive span and the processor's process span are all children of the request's
// span, linked to it, in one trace.
func TestTraceContextFromOutboxToHandler(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, dsn := freshDatabase(t, ctx)
	amqpURL := cmp.Or(os.Getenv(envAMQPURL), "amqp://guest:guest@127.0.0.1:5672/")
	if err := outbox.Migrate(ctx, db, "outbox"); err != nil {
		t.Fatal(err)
	}
	if err := inbox.Migrate(ctx, db, "inbox"); err != nil {
		t.Fatal(err)
	}
	exchange := "sidebox-embed-trace-" + randomHex(6)
	queue := exchange + "-q"
	declareExchange(t, amqpURL, exchange, queue)

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))

	// The service's request span and its write.
	reqCtx, req := tp.Tracer("orders").Start(ctx, "POST /orders")
	headers := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(reqCtx, headers)
	hdrs := map[string]any{}
	for k, v := range headers {
		hdrs[k] = v
	}
	if _, err := outbox.Write(reqCtx, db, outbox.Message{Exchange: exchange, RoutingKey: "order.created", Payload: []byte(`{}`), Headers: hdrs}); err != nil {
		t.Fatal(err)
	}
	req.End()
	want := req.SpanContext()

	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	r, err := relay.New(db, relay.Config{AMQPURLs: []string{amqpURL}, ListenDatabaseURL: dsn},
		relay.WithLogger(log), relay.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	c, err := inbox.NewConsumer(db, inbox.ConsumerConfig{Queue: queue, AMQPURLs: []string{amqpURL},
		Bindings: []inbox.Binding{{Exchange: exchange, RoutingKey: "order.created"}}},
		inbox.WithLogger(log), inbox.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var handled trace.SpanContext
	p, err := inbox.NewProcessor(db, inbox.ProcessorConfig{Consumer: queue, PollInterval: 50 * time.Millisecond},
		func(ctx context.Context, _ *sql.Tx, _ inbox.Message) error {
			mu.Lock()
			defer mu.Unlock()
			handled = trace.SpanContextFromContext(ctx)
			return nil
		}, inbox.WithLogger(log), inbox.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	// The consumer binds its queue first, so that the relay's publish is routed.
	runs := []func(context.Context) error{c.Run, r.Run, p.Run}
	done := make(chan error, len(runs))
	for i, run := range runs {
		go func() { done <- run(runCtx) }()
		if i == 0 {
			waitFor(t, ctx, "the consumer to be ready", c.Ready)
		}
	}
	waitFor(t, ctx, "the message to be processed", func() bool {
		return count(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL`) == 1
	})
	stop()
	var errs []error
	for range runs {
		errs = append(errs, <-done)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	if handled.TraceID() != want.TraceID() {
		t.Fatalf("the handler's context is in trace %v, want the request's %v", handled.TraceID(), want.TraceID())
	}
	kinds := map[string]trace.SpanKind{"publish " + exchange: trace.SpanKindProducer, "receive " + exchange: trace.SpanKindConsumer, "process " + exchange: trace.SpanKindConsumer}
	for _, sp := range exp.GetSpans() {
		kind, ok := kinds[sp.Name]
		if !ok {
			continue
		}
		delete(kinds, sp.Name)
		if sp.SpanKind != kind || sp.Parent.SpanID() != want.SpanID() || sp.SpanContext.TraceID() != want.TraceID() ||
			len(sp.Links) != 1 || sp.Links[0].SpanContext.SpanID() != want.SpanID() {
			t.Errorf("span %q: kind %v, parent %v, links %v; want %v, a child of the request's span linked to it", sp.Name, sp.SpanKind, sp.Parent, sp.Links, kind)
		}
		if sp.Name == "process "+exchange && sp.SpanContext.SpanID() != handled.SpanID() {
			t.Errorf("the handler's context carries span %v, not the process span %v", handled.SpanID(), sp.SpanContext.SpanID())
		}
	}
	for name := range kinds {
		t.Errorf("no span %q", name)
	}
}
