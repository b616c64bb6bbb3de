package topology

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/redact"
)

// The variables behind a Topology, named in its errors.
const (
	DeclareVar  = "SIDEBOX_OUTBOX_DECLARE"
	BindingsVar = "SIDEBOX_OUTBOX_BINDINGS"
)

// Channeler opens AMQP channels, waiting for a connection; *broker.Broker is one.
type Channeler interface {
	Channel(ctx context.Context) (*amqp.Channel, error)
}

// Error is a declaration the broker refused for good (a conflicting definition, a
// missing exchange, no permission): retrying cannot help. Var names the variable.
type Error struct {
	Var     string
	Problem string
}

func (e *Error) Error() string { return e.Var + ": " + e.Problem }

// Declare declares t on a channel of b: each exchange (durable), then each binding's
// queue (durable, only when missing, so an existing queue's arguments never conflict)
// and the binding. A lost connection is retried until ctx is done; a refusal is an
// *Error.
func Declare(ctx context.Context, b Channeler, t Topology, log *zap.Logger) error {
	if t.Empty() {
		return nil
	}
	poll := backoff.Broker()
	for attempt := 1; ; attempt++ {
		err := declareOnce(ctx, b, t)
		var refused *Error
		switch {
		case err == nil:
			log.Info("declared the outbox topology", zap.Stringers("exchanges", t.Exchanges), zap.Stringers("bindings", t.Bindings))
			return nil
		case errors.As(err, &refused), ctx.Err() != nil:
			return err
		}
		log.Warn("cannot declare the outbox topology yet; retrying", zap.Int("attempt", attempt), zap.String("error", redact.Text(err.Error())))
		if !poll.Sleep(ctx, attempt) {
			return ctx.Err()
		}
	}
}

func declareOnce(ctx context.Context, b Channeler, t Topology) error {
	ch, err := b.Channel(ctx)
	if err != nil {
		return err
	}
	open := []*amqp.Channel{ch}
	defer func() {
		for _, c := range open {
			_ = c.Close()
		}
	}()
	for _, e := range t.Exchanges {
		if err := ch.ExchangeDeclare(e.Name, e.Kind, true, false, false, false, nil); err != nil {
			return refusal(err, DeclareVar, func(ae *amqp.Error) string {
				if ae.Code == amqp.PreconditionFailed {
					return fmt.Sprintf("exchange %q exists with another definition: sidebox declares it as %s (type %s, durable, not auto-delete, not internal); RabbitMQ has it otherwise (%s). Declare it as it is in SIDEBOX_OUTBOX_DECLARE (name:type), or delete the exchange",
						e.Name, e, e.Kind, ae.Reason)
				}
				return fmt.Sprintf("cannot declare exchange %q (%s): %s", e.Name, e, ae.Reason)
			})
		}
	}
	for _, bd := range t.Bindings {
		next, err := ensureQueue(ctx, b, ch, bd.Queue)
		if next != ch {
			open = append(open, next)
			ch = next
		}
		if err != nil {
			return err
		}
		if err := ch.QueueBind(bd.Queue, bd.RoutingKey, bd.Exchange, false, nil); err != nil {
			return refusal(err, BindingsVar, func(ae *amqp.Error) string {
				if ae.Code == amqp.NotFound {
					return fmt.Sprintf("cannot bind queue %q to exchange %q: the exchange does not exist; list it in SIDEBOX_OUTBOX_DECLARE (%s)", bd.Queue, bd.Exchange, ae.Reason)
				}
				return fmt.Sprintf("cannot bind queue %q to exchange %q with key %q: %s", bd.Queue, bd.Exchange, bd.RoutingKey, ae.Reason)
			})
		}
	}
	return nil
}

// ensureQueue declares queue (durable) when it is missing and returns the channel to go
// on with: a failed passive declare closes the one it ran on, so it opens another.
func ensureQueue(ctx context.Context, b Channeler, ch *amqp.Channel, queue string) (*amqp.Channel, error) {
	_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err == nil {
		return ch, nil
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		return ch, refusal(err, BindingsVar, func(ae *amqp.Error) string {
			return fmt.Sprintf("cannot look up queue %q: %s", queue, ae.Reason)
		})
	}
	next, err := b.Channel(ctx)
	if err != nil {
		return ch, err
	}
	if _, err := next.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return next, refusal(err, BindingsVar, func(ae *amqp.Error) string {
			return fmt.Sprintf("cannot declare queue %q: %s", queue, ae.Reason)
		})
	}
	return next, nil
}

// refusal turns a channel exception the broker sends for a declaration (406, 404,
// 403, 530) into an *Error described by say; anything else (a lost connection) is
// returned as it is, to be retried.
func refusal(err error, varName string, say func(*amqp.Error) string) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) || !isRefusal(ae.Code) {
		return err
	}
	return &Error{Var: varName, Problem: say(ae)}
}

func isRefusal(code int) bool {
	switch code {
	case amqp.PreconditionFailed, amqp.NotFound, amqp.AccessRefused, amqp.NotAllowed:
		return true
	}
	return false
}
