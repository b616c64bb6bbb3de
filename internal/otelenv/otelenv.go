// Package otelenv builds the sidecar's OpenTelemetry tracer provider from the standard
// OTEL_* environment variables. Tracing is off unless an OTLP endpoint is set
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or
// OTEL_TRACES_EXPORTER=otlp; OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn
// it off. The exporter and the SDK read the other variables themselves (headers,
// timeout, compression, certificates, sampler, batch processor).
package otelenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/config"
)

// The OTLP protocols sidebox can export with.
const (
	ProtocolHTTP = "http/protobuf" // the default
	ProtocolGRPC = "grpc"
)

// DefaultServiceName is service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES sets it.
const DefaultServiceName = "sidebox"

// Settings is what sidebox itself decides from the environment.
type Settings struct {
	Enabled  bool
	Protocol string   // ProtocolHTTP or ProtocolGRPC
	Warnings []string // problems that do not stop the process, for the log
}

// Read reads the variables through lookup (os.LookupEnv) and checks them. Each problem
// is a *config.Error naming its variable; values are never quoted (an endpoint may
// carry credentials).
func Read(lookup func(string) (string, bool)) (Settings, error) {
	var s Settings
	var errs config.Errors
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	switch v := strings.ToLower(get("OTEL_SDK_DISABLED")); v {
	case "true":
		return s, nil
	case "", "false":
	default:
		s.Warnings = append(s.Warnings, "OTEL_SDK_DISABLED: not true or false; taken as false")
	}
	explicit := false
	switch v := strings.ToLower(get("OTEL_TRACES_EXPORTER")); v {
	case "none":
		return s, nil
	case "otlp":
		explicit = true
	case "":
	default:
		errs = append(errs, &config.Error{Var: "OTEL_TRACES_EXPORTER", Problem: fmt.Sprintf("must be otlp or none, got %q", v)})
	}
	endpoint := false
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		v := get(name)
		if v == "" {
			continue
		}
		endpoint = true
		if problem := checkEndpoint(v); problem != "" {
			errs = append(errs, &config.Error{Var: name, Problem: problem})
		}
	}
	s.Protocol = ProtocolHTTP
	for _, name := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} { // the second wins
		switch v := get(name); v {
		case "":
		case ProtocolHTTP, ProtocolGRPC:
			s.Protocol = v
		default:
			errs = append(errs, &config.Error{Var: name, Problem: fmt.Sprintf("must be %s or %s, got %q", ProtocolHTTP, ProtocolGRPC, v)})
		}
	}
	if len(errs) > 0 {
		return Settings{}, errs
	}
	s.Enabled = explicit || endpoint
	return s, nil
}

// checkEndpoint returns what is wrong with an endpoint URL, or "".
func checkEndpoint(v string) string {
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return "not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must be an http:// or https:// URL"
	case u.Host == "":
		return "has no host"
	}
	return ""
}

// Provider is the process's tracer provider; Shutdown exports the spans still
// buffered and stops it.
type Provider = sdktrace.TracerProvider

// Start builds the tracer provider for s (Enabled), exporting with s.Protocol, its
// resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with service.name
// DefaultServiceName and service.version version unless they set them. It connects to
// nothing yet: an unreachable collector shows as logged export errors, never as a
// failed start. Export errors go to log through the SDK's error handler, the one
// process-wide setting it has.
func Start(ctx context.Context, s Settings, version string, log *zap.Logger) (*Provider, error) {
	if !s.Enabled {
		return nil, errors.New("otelenv: tracing is not enabled")
	}
	var exp sdktrace.SpanExporter
	var err error
	if s.Protocol == ProtocolGRPC {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("start the OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		// A partial resource (say, a malformed OTEL_RESOURCE_ATTRIBUTES entry) is
		// still used.
		log.Warn("OpenTelemetry resource is incomplete", zap.Error(err))
	}
	res, err = resource.Merge(resource.NewSchemaless(semconv.ServiceName(DefaultServiceName), semconv.ServiceVersion(version)), res)
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("OpenTelemetry", zap.Error(err))
	}))
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}
