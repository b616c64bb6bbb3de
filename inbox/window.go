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
// ignores a prefetch size, and a prefetch count re-issued on a channel applies only to
// consumers started after it; so when the sizes call for another count, the consumer
// is cancelled, the deliveries it was sent are drained, and it consumes again with the
// new count. Delivery tags are per channel: the multiple ack covers both consumers'
// deliveries in order. A window is used by one goroutine at a time.
type window struct {
	ch    *amqp.Channel
	queue string
	max   int // ConsumerConfig.Prefetch
	bytes int // ConsumerConfig.PrefetchBytes

	size       *int // decaying maximum of the payload sizes seen; kept across sessions
	count      int  // prefetch count of the current consumer
	n          int  // consumers started on this channel
	tag        string
	deliveries <-chan amqp.Delivery
	next       int // count to consume with once the cancelled consumer drained; 0: none
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
	w.n++
	tag := fmt.Sprintf("sidebox-inbox-%d", w.n)
	d, err := w.ch.Consume(w.queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume queue %q: %w", w.queue, err)
	}
	w.count, w.tag, w.deliveries = count, tag, d
	return nil
}

// observe accounts for a delivery of size payload bytes. When the sizes call for a
// smaller count, or for at least twice the current one, it cancels the consumer: its
// deliveries channel closes once drained, and resume consumes again.
func (w *window) observe(size int) error {
	*w.size = max(size, *w.size-*w.size/1024) // halves in about 700 smaller deliveries
	want := w.want(*w.size)
	if w.next != 0 || (want >= w.count && (want < 2*w.count || w.count == w.max)) {
		return nil
	}
	if err := w.ch.Cancel(w.tag, false); err != nil {
		return fmt.Errorf("cancel consumer to change prefetch: %w", err)
	}
	w.next = want
	return nil
}

// resume is called when the deliveries channel closed. It reports false when the
// consumer was not cancelled by observe (the broker cancelled it, or the channel closed).
func (w *window) resume() (bool, error) {
	if w.next == 0 {
		return false, nil
	}
	next := w.next
	w.next = 0
	return true, w.start(next)
}

// stop cancels the consumer, unless observe already did.
func (w *window) stop() {
	if w.next == 0 {
		_ = w.ch.Cancel(w.tag, false)
	}
}
