// Package tracing carries W3C trace context (traceparent, tracestate) through sidebox
// and names its spans after the OpenTelemetry messaging semantic conventions. The relay
// and the inbox take a trace.TracerProvider from their callers; FromEnv builds one for
// the sidecar from the standard OTEL_* variables.
//
// Every sidebox span of a message is a child of the message's creation context (the
// traceparent it carries, written by the service into the outbox row) and links to it,
// as the conventions ask of "send" and "process" spans. A row without one gets the
// relay's publish span as its creation context, injected into the AMQP headers.
package tracing

import (
	"bytes"
	"context"
	"encoding/json"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// The W3C trace context headers.
const (
	TraceparentHeader = "traceparent"
	TracestateHeader  = "tracestate"
)

// Instrumentation is the name of the tracers sidebox asks its provider for.
const Instrumentation = "github.com/sidebox/sidebox"

// SchemaURL is the semantic conventions' version the spans follow.
const SchemaURL = semconv.SchemaURL

// Table is an AMQP header table as a carrier of trace context; only string values are
// read.
type Table amqp.Table

// Get returns the string value of key, "" when absent or not a string.
func (t Table) Get(key string) string {
	s, _ := t[key].(string)
	return s
}

// Set sets key to value.
func (t Table) Set(key, value string) { t[key] = value }

// Keys lists the keys of the table.
func (t Table) Keys() []string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	return keys
}

// FromTable returns the creation context carried in an AMQP header table, or an
// invalid one.
func FromTable(t amqp.Table) trace.SpanContext {
	if _, ok := t[TraceparentHeader]; !ok {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), Table(t)))
}

var traceparentKey = []byte(`"` + TraceparentHeader + `"`)

// headersJSON is the part of a stored headers object that carries trace context.
type headersJSON struct {
	Traceparent string `json:"traceparent"`
	Tracestate  string `json:"tracestate"`
}

func (h *headersJSON) Get(key string) string {
	switch key {
	case TraceparentHeader:
		return h.Traceparent
	case TracestateHeader:
		return h.Tracestate
	}
	return ""
}

func (h *headersJSON) Set(string, string) {}
func (h *headersJSON) Keys() []string     { return []string{TraceparentHeader, TracestateHeader} }

// FromJSON returns the creation context carried by a headers object as stored in a
// table's jsonb column, or an invalid one. Headers without a traceparent cost a scan
// and no allocation.
func FromJSON(headers []byte) trace.SpanContext {
	if !bytes.Contains(headers, traceparentKey) {
		return trace.SpanContext{}
	}
	var h headersJSON
	if json.Unmarshal(headers, &h) != nil || h.Traceparent == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), &h))
}

// Inject writes sc into t as traceparent (and tracestate when it has one).
func Inject(t amqp.Table, sc trace.SpanContext) {
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), Table(t))
}

// Start starts a span of kind for a message whose creation context is creation
// (possibly invalid): its child, linked to it, and linked to the span ctx carries, if
// any, which it replaces as parent; without a creation context, a child of ctx's span.
func Start(ctx context.Context, tr trace.Tracer, name string, kind trace.SpanKind, creation trace.SpanContext, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	opts = append(opts, trace.WithSpanKind(kind))
	if creation.IsValid() {
		links := []trace.Link{{SpanContext: creation}}
		if ambient := trace.SpanContextFromContext(ctx); ambient.IsValid() {
			links = append(links, trace.Link{SpanContext: ambient})
		}
		ctx = trace.ContextWithRemoteSpanContext(ctx, creation)
		opts = append(opts, trace.WithLinks(links...))
	}
	return tr.Start(ctx, name, opts...)
}

// SpanName is "operation destination", or the operation alone for the default
// exchange ("").
func SpanName(operation, exchange string) string {
	if exchange == "" {
		return operation
	}
	return operation + " " + exchange
}

// Message returns the attributes of a span about one RabbitMQ message.
func Message(opType attribute.KeyValue, opName, exchange, routingKey, messageID string, bodySize int) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		opType,
		semconv.MessagingOperationName(opName),
		semconv.MessagingDestinationName(exchange),
		semconv.MessagingMessageID(messageID),
		semconv.MessagingMessageBodySize(bodySize),
	}
	if routingKey != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(routingKey))
	}
	return attrs
}

// Operation types.
var (
	Send    = semconv.MessagingOperationTypeSend
	Receive = semconv.MessagingOperationTypeReceive
	Process = semconv.MessagingOperationTypeProcess
)

// ErrorType is the error.type attribute of a failed operation.
func ErrorType(kind string) attribute.KeyValue { return semconv.ErrorTypeKey.String(kind) }

// Tracer returns the tracer of tp for sidebox's spans, nil when tp is nil: callers
// check for nil and do nothing else.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(Instrumentation, trace.WithSchemaURL(SchemaURL))
}
