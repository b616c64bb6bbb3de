package sidecar

import (
	"context"
	"os"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/otelenv"
)

// tracingFlush bounds the export of the spans still buffered at exit.
const tracingFlush = 5 * time.Second

// startTracing starts the tracer provider that the standard OTEL_* variables ask for.
// Off, tp is nil and stop does nothing. A variable sidebox cannot use is a
// *config.Error (exit 2).
func startTracing(ctx context.Context, log *zap.Logger, version string) (tp trace.TracerProvider, stop func(), err error) {
	s, err := otelenv.Read(os.LookupEnv)
	if err != nil {
		return nil, func() {}, err
	}
	for _, w := range s.Warnings {
		log.Warn(w)
	}
	if !s.Enabled {
		return nil, func() {}, nil
	}
	p, err := otelenv.Start(ctx, s, version, log)
	if err != nil {
		return nil, func() {}, err
	}
	log.Info("OpenTelemetry tracing on", zap.String("protocol", s.Protocol))
	return p, func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingFlush)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			log.Warn("cannot export the last spans", zap.Error(err))
		}
	}, nil
}
