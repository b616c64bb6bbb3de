package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// publishConfirmed publishes one message per id to queue through the default exchange,
// as the relay does (persistent, mandatory, message_id, content_type, timestamp), on a
// confirm-mode channel of conn with at most window confirms outstanding, and returns once
// every message is confirmed. A nack or a returned message is an error.
func publishConfirmed(ctx context.Context, conn *amqp.Connection, queue string, ids []string, window int) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	var returned atomic.Int64
	returns := ch.NotifyReturn(make(chan amqp.Return, 64))
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range returns {
			returned.Add(1)
		}
	}()
	err = publishWindow(ctx, ch, queue, ids, window)
	if cerr := ch.Close(); cerr != nil && err == nil && !errors.Is(cerr, amqp.ErrClosed) {
		err = fmt.Errorf("close channel: %w", cerr)
	}
	<-drained // a return precedes its confirm, so the count is final now
	if err == nil && returned.Load() > 0 {
		err = fmt.Errorf("%d messages returned as unroutable", returned.Load())
	}
	return err
}

func publishWindow(ctx context.Context, ch *amqp.Channel, queue string, ids []string, window int) error {
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("enable confirms: %w", err)
	}
	pending := make([]*amqp.DeferredConfirmation, 0, len(ids))
	oldest := 0
	wait := func(dc *amqp.DeferredConfirmation) error {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("wait for confirm: %w", err)
		}
		if !ok {
			return errors.New("broker nacked a message")
		}
		return nil
	}
	for i, id := range ids {
		if len(pending)-oldest >= window {
			if err := wait(pending[oldest]); err != nil {
				return err
			}
			oldest++
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			MessageId:    id,
			ContentType:  "application/json",
			Timestamp:    time.Now(),
			Body:         payload(i),
		})
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		pending = append(pending, dc)
	}
	for _, dc := range pending[oldest:] {
		if err := wait(dc); err != nil {
			return err
		}
	}
	return nil
}

// sink is a consumer that records deliveries until it has seen want distinct message IDs.
// With expected IDs it records each one's receive time (monotonic clock); without, it
// only counts distinct IDs.
type sink struct {
	want     int
	index    map[string]int // expected ID → slot of recvAt; nil: any ID counts
	recvAt   []time.Time
	seen     map[string]struct{}
	total    int // deliveries, duplicates included
	unknown  int // deliveries with an ID not expected
	done     chan struct{}
	finished chan struct{}
	err      error
}

// newSink starts an auto-ack consumer of queue on conn. ids may be nil (count only).
func newSink(conn *amqp.Connection, queue string, want int, ids []string) (*sink, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("consume %s: %w", queue, err)
	}
	s := &sink{want: want, done: make(chan struct{}), finished: make(chan struct{})}
	if ids != nil {
		s.index = make(map[string]int, len(ids))
		for i, id := range ids {
			s.index[id] = i
		}
		s.recvAt = make([]time.Time, len(ids))
	} else {
		s.seen = make(map[string]struct{}, want)
	}
	go s.run(ch, deliveries)
	return s, nil
}

func (s *sink) run(ch *amqp.Channel, deliveries <-chan amqp.Delivery) {
	defer close(s.finished)
	distinct := 0
	defer func() {
		if distinct < s.want { // the broker closed the channel or the connection
			s.err = fmt.Errorf("consumer's deliveries ended after %d of %d distinct messages", distinct, s.want)
			close(s.done)
		}
	}()
	for d := range deliveries {
		now := time.Now()
		s.total++
		if s.index != nil {
			i, ok := s.index[d.MessageId]
			switch {
			case !ok:
				s.unknown++
				continue
			case !s.recvAt[i].IsZero():
				continue
			}
			s.recvAt[i] = now
		} else {
			if _, dup := s.seen[d.MessageId]; dup {
				continue
			}
			s.seen[d.MessageId] = struct{}{}
		}
		distinct++
		if distinct == s.want {
			close(s.done)
			break
		}
	}
	if err := ch.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		s.err = fmt.Errorf("close consumer channel: %w", err)
	}
	for range deliveries { // closed by ch.Close; auto-acked leftovers are counted as extra
		s.total++
	}
}

// wait blocks until the sink has all it wants (nil) or ctx is done. The sink's fields
// may be read once wait returned nil.
func (s *sink) wait(ctx context.Context) error {
	select {
	case <-s.done:
		<-s.finished
		return s.err
	case <-ctx.Done():
		return fmt.Errorf("consumer got fewer than %d distinct messages: %w", s.want, ctx.Err())
	}
}

// consumeAcking consumes n deliveries of queue on conn with prefetch and manual acks,
// acknowledging every batch deliveries at once (multiple), as a consumer that must ack
// does at its best; it returns when the last ack was sent.
func consumeAcking(ctx context.Context, conn *amqp.Connection, queue string, n, prefetch, batch int) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", queue, err)
	}
	unacked := 0
	for got := 0; got < n; {
		select {
		case <-ctx.Done():
			return fmt.Errorf("raw consumer got %d of %d: %w", got, n, ctx.Err())
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("raw consumer: deliveries closed after %d of %d", got, n)
			}
			got++
			unacked++
			if unacked == batch || got == n {
				if err := d.Ack(true); err != nil {
					return fmt.Errorf("ack: %w", err)
				}
				unacked = 0
			}
		}
	}
	return nil
}
