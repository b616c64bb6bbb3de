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
// ignores a prefetch size; a consumer's prefetch count is fixed when it starts; and a
// channel-wide (global) count is refused by quorum queues. So when the sizes call for
// another count, the session ends (errPrefetchChange): what it batched is stored and
// acknowledged, then its channel is closed, which returns the deliveries it held but did
// not store to the queue in one step, and the next session consumes with the new count.
// The consumer is never cancelled while it still stores deliveries: on a
// single-active-consumer queue that hands the queue to another consumer, and the two
// would store one key's messages in either order. A window is used by one goroutine at
// a time.
type window struct {
	ch    *amqp.Channel
	queue string
	max   int // ConsumerConfig.Prefetch
	bytes int // ConsumerConfig.PrefetchBytes

	size       *int // decaying maximum of the payload sizes seen; kept across sessions
	count      int  // prefetch count of the consumer
	tag        string
	deliveries <-chan amqp.Delivery
}

// want is the prefetch count for payloads of size bytes.
func (w *window) want(size int) int {
	return min(max(w.bytes/max(size, 1), 1), w.max)
}

// start sets the prefetch count and consumes.
func (w *window) start(count int) error {
	if err := w.ch.Qos(count, 0, false); err != nil {
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

// observe accounts for a delivery of size payload bytes. It reports true when the sizes
// call for a smaller count, or for at least twice the current one.
func (w *window) observe(size int) bool {
	// At least 1, so that a size has been seen: a new session starts from it.
	*w.size = max(size, 1, *w.size-*w.size/1024) // halves in about 700 smaller deliveries
	want := w.want(*w.size)
	return want < w.count || (want >= 2*w.count && w.count < w.max)
}

// stop cancels the consumer.
func (w *window) stop() { _ = w.ch.Cancel(w.tag, false) }
