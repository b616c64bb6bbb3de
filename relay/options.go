package relay

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
)

// Connection is an AMQP connection that its owner keeps open, reconnecting when it is
// lost, and on which the relay opens its channels. Give one with WithConnection to share
// a connection the process already keeps; otherwise the relay keeps its own, to
// Config.AMQPURLs.
type Connection interface {
	// Channel opens a channel, waiting for the connection while it is down, until ctx
	// is done.
	Channel(ctx context.Context) (*amqp.Channel, error)
	// Ready reports whether the connection is open.
	Ready() bool
	// FrameSize returns the frame size negotiated on the current connection, 0 while
	// there is none. A message whose headers do not fit in one frame is kept as dead.
	FrameSize() int
}

// Option configures what a Relay uses besides its Config.
type Option func(*options)

type options struct {
	log  *zap.Logger
	reg  prometheus.Registerer
	conn Connection
	tp   trace.TracerProvider // see WithTracerProvider
}

// WithLogger makes the relay log to log; default: no logging.
func WithLogger(log *zap.Logger) Option { return func(o *options) { o.log = log } }

// WithRegisterer registers the relay's metrics (sidebox_outbox_*, sidebox_up,
// sidebox_rabbitmq_blocked) with reg; default: a private registry. Metrics that reg
// already holds from another sidebox component are shared, not registered twice.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// WithConnection makes the relay publish on conn, which the caller keeps open for as
// long as Run runs, and closes only after Run returned (the batches in flight need their
// confirms). Config.AMQPURLs must then be empty.
func WithConnection(conn Connection) Option { return func(o *options) { o.conn = conn } }

// checkAMQPURL returns an error saying what is wrong with an AMQP URL, without quoting it.
func checkAMQPURL(u string) error {
	if problem := broker.CheckURL(u); problem != "" {
		return errors.New("a URL " + problem)
	}
	return nil
}
