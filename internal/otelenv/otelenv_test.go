package otelenv

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/sidebox/sidebox/internal/config"
)

func lookup(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestRead(t *testing.T) {
	for _, c := range []struct {
		name     string
		env      map[string]string
		enabled  bool
		protocol string
		badVars  []string
		warnings int
	}{
		{name: "nothing set: off", env: map[string]string{}},
		{name: "endpoint: on, http", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, enabled: true, protocol: ProtocolHTTP},
		{name: "traces endpoint, grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, enabled: true, protocol: ProtocolGRPC},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, enabled: true, protocol: ProtocolHTTP},
		{name: "exporter otlp: on with the default endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, enabled: true, protocol: ProtocolHTTP},
		{name: "SDK disabled", env: map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}},
		{name: "SDK disabled wins over bad values", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}},
		{name: "odd SDK_DISABLED: warned, on", env: map[string]string{"OTEL_SDK_DISABLED": "yes", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, enabled: true, protocol: ProtocolHTTP, warnings: 1},
		{name: "bad values", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT":        "collector:4318",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://",
			"OTEL_EXPORTER_OTLP_PROTOCOL":        "http/json",
			"OTEL_TRACES_EXPORTER":               "zipkin",
		}, badVars: []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Read(lookup(c.env))
			var bad []string
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					bad = append(bad, e.Var)
				}
			} else if err != nil {
				t.Fatalf("error %v is not config.Errors", err)
			}
			if strings.Join(bad, ",") != strings.Join(c.badVars, ",") {
				t.Errorf("bad variables %v, want %v (%v)", bad, c.badVars, err)
			}
			if err != nil {
				var one *config.Error
				if !errors.As(err, &one) {
					t.Error("errors.As finds no *config.Error: the CLI would not exit 2")
				}
				if strings.Contains(err.Error(), "collector:4318") {
					t.Errorf("error quotes an endpoint: %v", err)
				}
				return
			}
			if s.Enabled != c.enabled || (c.enabled && s.Protocol != c.protocol) || len(s.Warnings) != c.warnings {
				t.Errorf("got %+v, want enabled %v protocol %q and %d warnings", s, c.enabled, c.protocol, c.warnings)
			}
		})
	}
}

// export starts the provider the environment asks for, ends one span and shuts the
// provider down, which exports it.
func export(t *testing.T) {
	t.Helper()
	s, err := Read(os.LookupEnv)
	if err != nil || !s.Enabled {
		t.Fatalf("Read: %+v, %v", s, err)
	}
	p, err := Start(context.Background(), s, "v1.2.3", zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.Tracer("test").Start(context.Background(), "publish orders")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// checkExport checks what the collector received.
func checkExport(t *testing.T, req *coltrace.ExportTraceServiceRequest) {
	t.Helper()
	if req == nil || len(req.ResourceSpans) != 1 {
		t.Fatalf("the collector received %v", req)
	}
	rs := req.ResourceSpans[0]
	res := map[string]string{}
	for _, a := range rs.Resource.Attributes {
		res[a.Key] = a.Value.GetStringValue()
	}
	if res["service.name"] != "orders-sidecar" || res["service.version"] != "v1.2.3" || res["deployment.environment.name"] != "test" {
		t.Errorf("resource %v: want service.name from OTEL_SERVICE_NAME, the version, OTEL_RESOURCE_ATTRIBUTES", res)
	}
	if len(rs.ScopeSpans) != 1 || len(rs.ScopeSpans[0].Spans) != 1 || rs.ScopeSpans[0].Spans[0].Name != "publish orders" {
		t.Errorf("spans %v", rs.ScopeSpans)
	}
}

func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans go to <endpoint>/v1/traces as OTLP/HTTP
// protobuf, with the resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func TestExportOverHTTP(t *testing.T) {
	got := make(chan *coltrace.ExportTraceServiceRequest, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/base/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || r.Header.Get("Authorization") != "Bearer k" {
			t.Errorf("export to %s, content type %q, authorization %q", r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("Authorization"))
		}
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			t.Errorf("decode export: %v", err)
		}
		got <- &req
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer srv.Close()
	setEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL + "/base",
		"OTEL_EXPORTER_OTLP_HEADERS":  "Authorization=Bearer k",
		"OTEL_SERVICE_NAME":           "orders-sidecar",
		"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test",
	})
	export(t)
	select {
	case req := <-got:
		checkExport(t, req)
	default:
		t.Fatal("nothing exported")
	}
}

type collector struct {
	coltrace.UnimplementedTraceServiceServer
	got chan *coltrace.ExportTraceServiceRequest
}

func (c *collector) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	c.got <- req
	return &coltrace.ExportTraceServiceResponse{}, nil
}

// OTEL_EXPORTER_OTLP_PROTOCOL=grpc exports with OTLP/gRPC.
func TestExportOverGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{got: make(chan *coltrace.ExportTraceServiceRequest, 10)}
	srv := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	setEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://" + ln.Addr().String(),
		"OTEL_EXPORTER_OTLP_PROTOCOL":        "grpc",
		"OTEL_SERVICE_NAME":                  "orders-sidecar",
		"OTEL_RESOURCE_ATTRIBUTES":           "deployment.environment.name=test",
	})
	export(t)
	select {
	case req := <-c.got:
		checkExport(t, req)
	default:
		t.Fatal("nothing exported")
	}
}
