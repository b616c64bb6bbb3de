package inbox

import (
	amqp "github.com/rabbitmq/amqp091-go"
)

// SeqHeader is the header in which the sidebox relay stamps a message's outbox sequence
// number: a 64-bit integer growing in insertion order within an outbox table.
const SeqHeader = "x-outbox-seq"

// maxTrackedKeys bounds the keys whose highest sequence number a consumer remembers.
const maxTrackedKeys = 100_000

// seqTracker remembers the highest x-outbox-seq delivered per ordering key, to notice a
// delivery that goes back. It sees one consumer's deliveries in delivery order; it
// forgets what it saw when the consumer process restarts, and about half of its keys
// when it holds maxTrackedKeys.
type seqTracker struct {
	highest map[string]int64
}

// check records d's sequence number for key and reports the highest one delivered
// before when d's is lower. Redelivered messages (which may legitimately come again
// after later ones), deliveries without a key and values that are not integers are
// not checked.
func (s *seqTracker) check(d *amqp.Delivery, key string) (prev int64, back bool) {
	if key == "" || d.Redelivered {
		return 0, false
	}
	seq, ok := headerInt(d.Headers[SeqHeader])
	if !ok {
		return 0, false
	}
	if s.highest == nil {
		s.highest = map[string]int64{}
	}
	prev, seen := s.highest[key]
	if seen && seq < prev {
		return prev, true
	}
	if !seen && len(s.highest) >= maxTrackedKeys {
		n := 0
		for k := range s.highest { // map order is random: forget an arbitrary half
			delete(s.highest, k)
			if n++; n >= maxTrackedKeys/2 {
				break
			}
		}
	}
	s.highest[key] = seq
	return 0, false
}

// headerInt returns an AMQP header value of any integer type as an int64.
func headerInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int32:
		return int64(n), true
	case int16:
		return int64(n), true
	case int8:
		return int64(n), true
	case int:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint64:
		if n <= 1<<63-1 {
			return int64(n), true
		}
	}
	return 0, false
}
