package inbox

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/metrics"
)

// Connection is an AMQP connection that its owner keeps open, reconnecting when it is
// lost, and on which the Consumer opens its channel. Give one with WithConnection to
// share a connection the process already keeps; otherwise the Consumer keeps its own, to
// ConsumerConfig.AMQPURLs.
type Connection interface {
	// Channel opens a channel, waiting for the connection while it is down, until ctx
	// is done.
	Channel(ctx context.Context) (*amqp.Channel, error)
	// Ready reports whether the connection is open.
	Ready() bool
}

// Option configures what a Consumer, Processor or Purger uses besides its config.
type Option func(*options)

type options struct {
	log  *zap.Logger
	reg  prometheus.Registerer
	conn Connection
	tp   trace.TracerProvider // see WithTracerProvider
}

func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	return o
}

// metrics registers the collectors with the given registerer, or a private registry.
func (o options) metrics() (*metrics.Metrics, error) {
	reg := o.reg
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return metrics.Register(reg)
}

// WithLogger makes the component log to log; default: no logging.
func WithLogger(log *zap.Logger) Option { return func(o *options) { o.log = log } }

// WithRegisterer registers the component's metrics (sidebox_inbox_*, and for a Consumer
// with its own connection sidebox_up and sidebox_rabbitmq_blocked) with reg; default: a
// private registry. Metrics that reg already holds from another sidebox component are
// shared, not registered twice. A Processor has no metrics.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// WithConnection makes a Consumer consume on conn, which the caller keeps open for as
// long as Run runs; ConsumerConfig.AMQPURLs must then be empty. A Processor or Purger
// refuses it: they use only the database.
func WithConnection(conn Connection) Option { return func(o *options) { o.conn = conn } }
