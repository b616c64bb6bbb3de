package inbox

import (
	"context"
	"database/sql"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/tracing"
)

// WithTracerProvider makes a Consumer or a Processor emit spans after the
// OpenTelemetry messaging conventions, each a child of the message's creation context
// (its traceparent and tracestate headers) and linked to it:
//   - the Consumer, "receive <exchange>" (kind consumer) for each delivery, from the
//     start of its batch's insert to its commit;
//   - the Processor, "process <exchange>" (kind consumer) around each handler call; the
//     handler's context carries that span.
//
// Default: no spans, and no cost. Without it a Processor still hands the handler a
// context carrying the message's trace context, as a remote span context.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// Attributes of sidebox's inbox spans beyond the conventions'.
const (
	attrQueue    = attribute.Key("sidebox.inbox.queue")
	attrConsumer = attribute.Key("sidebox.inbox.consumer")
	attrAttempts = attribute.Key("sidebox.inbox.attempts") // failed handler calls before this one
)

// receiveTracer makes the Consumer's receive spans; nil when tracing is off.
type receiveTracer struct {
	t               trace.Tracer
	queue, consumer string
}

func newReceiveTracer(tp trace.TracerProvider, cfg ConsumerConfig) *receiveTracer {
	if tp == nil {
		return nil
	}
	return &receiveTracer{t: tracing.Tracer(tp), queue: cfg.Queue, consumer: cfg.Consumer}
}

// stored records a span for each delivery of b, whose storing ended with err, and
// returns err.
func (rt *receiveTracer) stored(b *batch, err error) error {
	if rt == nil {
		return err
	}
	end := time.Now()
	for i := range b.deliveries {
		d := &b.deliveries[i]
		exchange := pg.Text(d.Exchange)
		attrs := append(tracing.Message(tracing.Receive, "receive", exchange, pg.Text(d.RoutingKey), pg.Text(d.MessageId), len(d.Body)),
			attribute.Int64("messaging.rabbitmq.message.delivery_tag", int64(d.DeliveryTag)),
			attrQueue.String(rt.queue), attrConsumer.String(rt.consumer))
		_, span := tracing.Start(context.Background(), rt.t, tracing.SpanName("receive", exchange), trace.SpanKindConsumer,
			tracing.FromTable(d.Headers), trace.WithTimestamp(b.start), trace.WithAttributes(attrs...))
		switch {
		case b.rejected[d.DeliveryTag]:
			span.SetAttributes(tracing.ErrorType("rejected"))
			span.SetStatus(codes.Error, "rejected without requeue")
		case err != nil:
			span.SetAttributes(tracing.ErrorType("not_stored"))
			span.SetStatus(codes.Error, "not stored; the broker delivers it again")
		}
		span.End(trace.WithTimestamp(end))
	}
	return err
}

// callTraced calls the handler with a context carrying msg's trace context: the
// process span when tracing is on, else the creation context itself.
func (p *Processor) callTraced(ctx context.Context, tx *sql.Tx, msg *Message) error {
	creation := tracing.FromJSON(msg.Headers)
	if p.tracer == nil {
		if creation.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, creation)
		}
		return p.callHandler(ctx, tx, msg)
	}
	attrs := append(tracing.Message(tracing.Process, "process", msg.Exchange, msg.RoutingKey, msg.MessageID, len(msg.Payload)),
		attrConsumer.String(msg.Consumer), attrAttempts.Int(msg.Attempts))
	ctx, span := tracing.Start(ctx, p.tracer, tracing.SpanName("process", msg.Exchange), trace.SpanKindConsumer, creation,
		trace.WithAttributes(attrs...))
	err := p.callHandler(ctx, tx, msg)
	if err != nil {
		span.SetAttributes(tracing.ErrorType("handler_failed"))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	return err
}
