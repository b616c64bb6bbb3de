package inbox

import (
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// TestConsumerCountsSeqRegressions: a delivery whose x-outbox-seq is lower than one
// delivered before for its key is counted (and logged), and still stored.
func TestConsumerCountsSeqRegressions(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_regress")
	var msgs []amqp.Publishing
	add := func(key string, seq any) {
		h := amqp.Table{"x-outbox-seq": seq}
		if key != "" {
			h["x-ordering-key"] = key
		}
		msgs = append(msgs, amqp.Publishing{MessageId: strconv.Itoa(len(msgs)), Headers: h})
	}
	add("a", int64(1))
	add("b", int64(1))
	add("a", int64(3))
	add("a", int64(2)) // back: counted
	add("b", int32(2)) // any integer type
	add("a", int64(2)) // still below 3: counted
	add("", int64(1))  // no key: no order
	add("", int64(0))
	add("b", "x") // not an integer: ignored
	add("a", int64(4))
	publish(t, conn, queue, msgs...)

	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl})
	testenv.Eventually(t, 20*time.Second, "every delivery stored", func() bool { return r.stored() == len(msgs) })
	r.stop(t)
	if got := counterValue(r.m.InboxSeqRegressed.WithLabelValues(queue)); got != 2 {
		t.Errorf("seq regressions = %d, want 2", got)
	}
}
