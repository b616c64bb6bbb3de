package e2e_test

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sidebox/sidebox/internal/testenv"
)

// With OTEL_EXPORTER_OTLP_ENDPOINT set, `sidebox relay` exports its publish spans over
// OTLP/HTTP, under OTEL_SERVICE_NAME, as children of the row's traceparent.
func TestRelayExportsSpansFromTheEnvironment(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	db, dbURL := testenv.DB(t)
	amqpURL := testenv.AMQPURL(t)
	sidebox(t, ctx, []string{"SIDEBOX_DATABASE_URL=" + dbURL}, "migrate", "up")
	exchange, queue := testenv.Name(t, "e2e_trace"), testenv.Name(t, "e2e_trace_q")
	ch := amqpChannel(t, amqpURL)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = ch.ExchangeDelete(exchange, false, false)
	})

	exports := make(chan *coltrace.ExportTraceServiceRequest, 100)
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if r.URL.Path == "/v1/traces" && proto.Unmarshal(body, &req) == nil {
			exports <- &req
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()

	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if _, err := db.ExecContext(ctx, `INSERT INTO outbox (exchange, routing_key, payload, headers) VALUES ($1, 'order.created', '{}', $2)`,
		exchange, `{"traceparent": "`+traceparent+`"}`); err != nil {
		t.Fatal(err)
	}
	relay := startSidebox(t, "relay", []string{
		"SIDEBOX_DATABASE_URL=" + dbURL, "SIDEBOX_AMQP_URL=" + amqpURL,
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL,
		"OTEL_SERVICE_NAME=orders-sidecar",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	})

	found := false
	for !found {
		select {
		case req := <-exports:
			for _, rs := range req.ResourceSpans {
				service := ""
				for _, a := range rs.Resource.Attributes {
					if a.Key == "service.name" {
						service = a.Value.GetStringValue()
					}
				}
				for _, ss := range rs.ScopeSpans {
					for _, sp := range ss.Spans {
						if sp.Name != "publish "+exchange {
							continue
						}
						found = true
						if service != "orders-sidecar" || hex.EncodeToString(sp.TraceId) != "4bf92f3577b34da6a3ce929d0e0e4736" ||
							hex.EncodeToString(sp.ParentSpanId) != "00f067aa0ba902b7" {
							t.Errorf("span %q of service %q: trace %x, parent %x; want the row's", sp.Name, service, sp.TraceId, sp.ParentSpanId)
						}
					}
				}
			}
		case <-ctx.Done():
			t.Fatalf("no publish span exported; relay log:\n%s", relay.LogTail())
		}
	}
	if err := relay.stop(); err != nil {
		t.Errorf("%v; log:\n%s", err, relay.LogTail())
	}
}
