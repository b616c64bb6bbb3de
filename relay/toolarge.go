package relay

import (
	"fmt"
	"regexp"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// RabbitMQ does not announce its max_message_size (connection.tune carries only the
// frame size), so the relay starts from Config.MaxMessageBytes and learns the broker's
// limit when it refuses a message: it closes the channel with 406 PRECONDITION_FAILED
// "message size N is larger than configured max size M" (without "configured" when M
// is its built-in maximum).
var tooLargeReason = regexp.MustCompile(`message size (\d+) is larger than (?:configured )?max size (\d+)`)

// maxMessage returns the largest payload the relay sends: Config.MaxMessageBytes, or
// the broker's limit once learned, whichever is lower.
func (r *Relay) maxMessage() int {
	m := r.cfg.MaxMessageBytes
	if b := r.brokerMax.Load(); b > 0 && b < int64(m) {
		m = int(b)
	}
	return m
}

// oversized returns why a row with a payload of size bytes can never be published,
// or "" when it may be.
func (r *Relay) oversized(size int) string {
	if m := r.maxMessage(); size > m {
		return fmt.Sprintf("payload of %d bytes is larger than the largest message the broker takes (%d bytes)", size, m)
	}
	return ""
}

// refusedAsTooLarge reports whether the broker closed a channel because a message was
// larger than its max_message_size, and remembers the limit it gave.
func (r *Relay) refusedAsTooLarge(e *amqp.Error) bool {
	if e == nil || !e.Server || e.Code != amqp.PreconditionFailed {
		return false
	}
	m := tooLargeReason.FindStringSubmatch(e.Reason)
	if m == nil {
		return false
	}
	if limit, err := strconv.ParseInt(m[2], 10, 64); err == nil && limit > 0 {
		for {
			old := r.brokerMax.Load()
			if old != 0 && old <= limit {
				break
			}
			if r.brokerMax.CompareAndSwap(old, limit) {
				r.log.Info("the broker's max_message_size is below the configured largest message; larger rows are kept as dead without being sent",
					zap.Int64("max_message_size", limit), zap.Int("configured", r.cfg.MaxMessageBytes))
				break
			}
		}
	}
	return true
}
