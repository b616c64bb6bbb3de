package relay

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sidebox/sidebox/internal/amqpmap"
	"github.com/sidebox/sidebox/internal/tracing"
)

// WithTracerProvider makes the relay emit a span for each message it publishes, after
// the OpenTelemetry messaging conventions: "publish <exchange>", kind producer, a child
// of the creation context the row's traceparent and tracestate headers carry and
// linked to it. Those headers go out unchanged; a row without them gets the publish
// span's context injected, which is then the message's creation context. Default: no
// spans, and no cost.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// tracer makes the publish spans; nil when tracing is off.
type tracer struct {
	t trace.Tracer
}

func newTracer(tp trace.TracerProvider) *tracer {
	if tp == nil {
		return nil
	}
	return &tracer{t: tracing.Tracer(tp)}
}

// publishSpans are the spans of one batch's rows, nil when tracing is off.
type publishSpans []trace.Span

// publishing starts a span for each row of a batch about to be published: msgs are
// the rows mapped onto AMQP, res their results so far (a row that cannot be mapped
// has failed already). A message without trace context gets its span's, if it fits in
// the frame (frameMax, 0: unknown).
func (t *tracer) publishing(ctx context.Context, rows []row, msgs []amqp.Publishing, res []result, frameMax int) publishSpans {
	if t == nil {
		return nil
	}
	spans := make(publishSpans, len(rows))
	for i := range rows {
		rw, msg := &rows[i], &msgs[i]
		creation := tracing.FromTable(msg.Headers)
		_, span := tracing.Start(ctx, t.t, tracing.SpanName("publish", rw.exchange), trace.SpanKindProducer, creation,
			trace.WithAttributes(tracing.Message(tracing.Send, "publish", rw.exchange, rw.routingKey, rw.id, rw.size)...))
		spans[i] = span
		if creation.IsValid() || res[i].outcome == failed {
			continue
		}
		if _, set := msg.Headers[tracing.TraceparentHeader]; set {
			continue // present but not valid: the row's own, left as it is
		}
		sc := span.SpanContext()
		if frameMax > 0 && contentHeaderSize(rw, msg.Headers)+injectedSize(sc) > frameMax {
			continue
		}
		if msg.Headers == nil {
			msg.Headers = amqp.Table{}
		}
		tracing.Inject(msg.Headers, sc)
	}
	return spans
}

// end ends the spans with the rows' outcomes.
func (s publishSpans) end(res []result) {
	for i, span := range s {
		switch x := res[i]; x.outcome {
		case confirmed:
		case failed:
			span.SetAttributes(tracing.ErrorType(x.kind.String()))
			span.SetStatus(codes.Error, x.reason)
		default:
			span.SetAttributes(tracing.ErrorType("unconfirmed"))
			span.SetStatus(codes.Error, "no confirm from the broker; the row will be published again")
		}
		span.End()
	}
}

// String names a failure kind for error.type.
func (k failKind) String() string {
	switch k {
	case failReturned:
		return "returned"
	case failNacked:
		return "nacked"
	case failPermanent:
		return "unpublishable"
	}
	return "channel_error"
}

// contentHeaderSize is the size of the message's content header frame, as
// row.publishing computes it.
func contentHeaderSize(rw *row, headers amqp.Table) int {
	return 8 + 14 + 1 + len(rw.contentType) + 1 + len(rw.messageType) + 1 + len(rw.id) + 8 + 1 + 4 + tableSize(headers)
}

// injectedSize is what writing sc's traceparent and tracestate adds to the headers.
func injectedSize(sc trace.SpanContext) int {
	n := amqpmap.StringSize(tracing.TraceparentHeader, 55)
	if ts := sc.TraceState().String(); ts != "" {
		n += amqpmap.StringSize(tracing.TracestateHeader, len(ts))
	}
	return n
}

// tableSize is the encoded size of the fields of a table of the types amqpmap.Headers
// produces.
func tableSize(t amqp.Table) int {
	n := 0
	for k, v := range t {
		n += 1 + len(k) + fieldSize(v)
	}
	return n
}

func fieldSize(v any) int {
	switch v := v.(type) {
	case string:
		return 1 + 4 + len(v)
	case bool:
		return 1 + 1
	case amqp.Table:
		return 1 + 4 + tableSize(v)
	case []any:
		n := 1 + 4
		for _, e := range v {
			n += fieldSize(e)
		}
		return n
	case nil:
		return 1
	}
	return 1 + 8 // int64, float64
}
