package inbox

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// sizeGuess is the payload size assumed before any delivery was seen: RabbitMQ 4's
// default max_message_size. The first deliveries correct it.
const sizeGuess = 16 << 20

// window is the session's consumer on its channel, with a prefetch count that keeps the
// unacknowledged payloads within PrefetchBytes for the message sizes seen. RabbitMQ
// ignores a prefetch size, and a per-consumer prefetch count applies only to consumers
// started after it; so the consumer is started once with Prefetch as its own limit, and
// the count that the sizes call for is the channel's limit (basic.qos with global set),
// which RabbitMQ applies at once. The consumer is never cancelled to change the count:
// on a single-active-consumer queue a cancel hands the queue to another consumer while
// this one still stores what it was sent, and the two would store one key's messages
// in either order. A window is used by one goroutine at a time.
type window struct {
	ch    *amqp.Channel
	queue string
	max   int // ConsumerConfig.Prefetch
	bytes int // ConsumerConfig.PrefetchBytes

	size       *int // decaying maximum of the payload sizes seen; kept across sessions
	count      int  // the channel's prefetch count
	tag        string
	deliveries <-chan amqp.Delivery
	changed    func(count int) // called after each change of count; may be nil
}

// want is the prefetch count for payloads of size bytes.
func (w *window) want(size int) int {
	return min(max(w.bytes/max(size, 1), 1), w.max)
}

// start sets the prefetch counts and consumes.
func (w *window) start(count int) error {
	if err := w.ch.Qos(w.max, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	if err := w.ch.Qos(count, 0, true); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	const tag = "sidebox-inbox"
	d, err := w.ch.Consume(w.queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume queue %q: %w", w.queue, err)
	}
	w.count, w.tag, w.deliveries = count, tag, d
	return nil
}

// observe accounts for a delivery of size payload bytes. When the sizes call for a
// smaller count, or for at least twice the current one, it sets the channel's count.
func (w *window) observe(size int) error {
	*w.size = max(size, *w.size-*w.size/1024) // halves in about 700 smaller deliveries
	want := w.want(*w.size)
	if want >= w.count && (want < 2*w.count || w.count == w.max) {
		return nil
	}
	if err := w.ch.Qos(want, 0, true); err != nil {
		return fmt.Errorf("change prefetch: %w", err)
	}
	w.count = want
	if w.changed != nil {
		w.changed(want)
	}
	return nil
}

// stop cancels the consumer.
func (w *window) stop() { _ = w.ch.Cancel(w.tag, false) }
