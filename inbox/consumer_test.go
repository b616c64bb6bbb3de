package inbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/testenv"
)

func TestConsumerStoresDistinctIDsOnce(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_dedup")

	// 500 deliveries, 400 distinct ids: ids 0..99 come twice.
	var msgs []amqp.Publishing
	for i := range 500 {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprintf("m-%03d", i%400), Body: []byte(strconv.Itoa(i))})
	}
	publish(t, conn, queue, msgs...)

	// One worker: batches commit in delivery order, so the first copy of an id is the
	// one stored. With several, a later copy may commit first (docs/inbox.md).
	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl, Workers: 1})
	testenv.Eventually(t, 30*time.Second, "500 deliveries settled", func() bool { return r.stored()+r.duplicates() == 500 })
	r.stop(t) // anything not acknowledged would be requeued now

	if got := countRows(t, db, `SELECT count(*) FROM inbox WHERE consumer = $1`, queue); got != 400 {
		t.Errorf("inbox rows = %d, want 400", got)
	}
	if got := countRows(t, db, `SELECT count(DISTINCT message_id) FROM inbox`); got != 400 {
		t.Errorf("distinct ids = %d, want 400", got)
	}
	if r.received() != 500 || r.stored() != 400 || r.duplicates() != 100 {
		t.Errorf("received/stored/duplicates = %d/%d/%d, want 500/400/100", r.received(), r.stored(), r.duplicates())
	}
	var body []byte
	if err := db.QueryRow(`SELECT payload FROM inbox WHERE message_id = 'm-007'`).Scan(&body); err != nil || string(body) != "7" {
		t.Errorf("payload of m-007 = %q, %v; want the first delivery's, \"7\"", body, err)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages after the consumer stopped, want 0 (all acknowledged)", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL OR dead_at IS NOT NULL OR attempts <> 0`); n != 0 {
		t.Errorf("%d stored rows are not plain unprocessed rows", n)
	}
}

func TestConsumerStoresMessageFields(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "app.orders_inbox")
	url, conn, queue := testQueue(t, "inbox_fields")
	ts := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	publish(t, conn, queue,
		amqp.Publishing{
			MessageId: "a", Type: "order.created", ContentType: "application/json", Body: []byte{0, 1, 2, 0xff},
			Headers: amqp.Table{
				"x-ordering-key": "order-42", "s": "text", "i": int64(1 << 60), "b": true, "f": 1.5,
				"d": amqp.Decimal{Scale: 2, Value: 1234}, "t": ts, "x": []byte("hi"),
				"nested": amqp.Table{"n": int32(-3)}, "list": []any{"a", int16(2)}, "nul": "a\x00b",
			},
		},
		amqp.Publishing{MessageId: "b"}, // no body, no headers
	)
	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl, Consumer: "orders"})
	testenv.Eventually(t, 20*time.Second, "2 rows stored", func() bool { return r.stored() == 2 })
	r.stop(t)

	var (
		exchange, key, typ, ct, okey string
		headers                      []byte
		payload                      []byte
	)
	err := db.QueryRow(`SELECT exchange, routing_key, message_type, content_type, ordering_key, headers, payload
		FROM app.orders_inbox WHERE consumer = 'orders' AND message_id = 'a'`).Scan(&exchange, &key, &typ, &ct, &okey, &headers, &payload)
	if err != nil {
		t.Fatalf("read row: %v", err)
	}
	if exchange != "" || key != queue || typ != "order.created" || ct != "application/json" || okey != "order-42" || !bytes.Equal(payload, []byte{0, 1, 2, 0xff}) {
		t.Errorf("row = %q %q %q %q %q %v", exchange, key, typ, ct, okey, payload)
	}
	var got map[string]any
	dec := json.NewDecoder(bytes.NewReader(headers))
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("headers %s: %v", headers, err)
	}
	want := map[string]any{
		"x-ordering-key": "order-42", "s": "text", "i": json.Number("1152921504606846976"), "b": true, "f": json.Number("1.5"),
		"d": json.Number("12.34"), "t": "2024-05-01T12:00:00Z", "x": "aGk=",
		"nested": map[string]any{"n": json.Number("-3")}, "list": []any{"a", json.Number("2")}, "nul": "a\uFFFDb",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("headers = %v\nwant      %v", got, want)
	}
	var nullType, nullOrder bool
	if err := db.QueryRow(`SELECT message_type IS NULL, ordering_key IS NULL, headers = '{}' AND payload = '' 
		FROM app.orders_inbox WHERE message_id = 'b'`).Scan(&nullType, &nullOrder, new(bool)); err != nil || !nullType || !nullOrder {
		t.Errorf("row b: type null %v, ordering key null %v, err %v", nullType, nullOrder, err)
	}
}

func TestTwoConsumersRejectDeliveriesWithoutID(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url := testenv.AMQPURL(t)
	conn := amqpConn(t, url)
	queue := testenv.Name(t, "inbox_two")
	dlx, dlq := queue+"_dlx", queue+"_dlq"
	setup := channel(t, conn)
	if err := setup.ExchangeDeclare(dlx, "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	declareQueue(t, conn, dlq, nil)
	if err := setup.QueueBind(dlq, "", dlx, false, nil); err != nil {
		t.Fatal(err)
	}
	declareQueue(t, conn, queue, amqp.Table{"x-dead-letter-exchange": dlx})

	// Small windows so that both consumers get work.
	cfg := ConsumerConfig{Queue: queue, Table: tbl, Prefetch: 10, BatchSize: 5}
	c1 := startConsumer(t, db, url, cfg)
	c2 := startConsumer(t, db, url, cfg)

	var msgs []amqp.Publishing
	for i := range 200 {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprintf("id-%d", i), Body: []byte("x")})
		if i%40 == 0 {
			msgs = append(msgs, amqp.Publishing{Body: []byte("no id")})
		}
	}
	msgs = append(msgs, amqp.Publishing{MessageId: "bad\xff", Body: []byte("invalid id")})
	publish(t, conn, queue, msgs...)

	settled := func() int {
		return c1.stored() + c2.stored() + c1.duplicates() + c2.duplicates() +
			c1.rejected(RejectNoMessageID) + c2.rejected(RejectNoMessageID) +
			c1.rejected(RejectInvalidMessageID) + c2.rejected(RejectInvalidMessageID)
	}
	testenv.Eventually(t, 30*time.Second, "206 deliveries settled", func() bool { return settled() == 206 })
	c1.stop(t)
	c2.stop(t)

	if c1.received() == 0 || c2.received() == 0 {
		t.Errorf("received %d and %d: both consumers should have had work", c1.received(), c2.received())
	}
	if got := c1.rejected(RejectNoMessageID) + c2.rejected(RejectNoMessageID); got != 5 {
		t.Errorf("rejected without message_id = %d, want 5", got)
	}
	if got := c1.rejected(RejectInvalidMessageID) + c2.rejected(RejectInvalidMessageID); got != 1 {
		t.Errorf("rejected with invalid message_id = %d, want 1", got)
	}
	if got := countRows(t, db, `SELECT count(*) FROM inbox`); got != 200 {
		t.Errorf("inbox rows = %d, want 200", got)
	}
	if got := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id = '' OR payload <> 'x'`); got != 0 {
		t.Errorf("%d rows stored from deliveries without a valid message_id", got)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
	testenv.Eventually(t, 10*time.Second, "6 dead-lettered messages", func() bool { return depth(t, conn, dlq) == 6 })
}

// TestConsumerKilledBetweenCommitAndAck kills a consumer process right after its first
// batch committed and before the acknowledgement: the broker redelivers the batch, and
// the next consumer stores none of it twice.
func TestConsumerKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	db, dbURL, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_kill")
	const total = 300
	publish(t, conn, queue, numbered("k-", total)...)

	runUntilKilled(t, db, dbURL, "TestHelperConsumerProcess", "consumer", "HELPER_AMQP="+url, "HELPER_QUEUE="+queue)
	committed := countRows(t, db, `SELECT count(*) FROM inbox`)
	if committed == 0 || committed > 100 {
		t.Fatalf("the killed consumer committed %d rows, want its batches in flight (1..2×50)", committed)
	}
	// Nothing was acknowledged: every message comes back once the broker saw the death.
	testenv.Eventually(t, 10*time.Second, "all messages back in the queue", func() bool { return depth(t, conn, queue) == total })

	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl})
	testenv.Eventually(t, 30*time.Second, "all deliveries settled", func() bool { return r.stored()+r.duplicates() == total })
	r.stop(t)
	if r.duplicates() != committed || r.stored() != total-committed {
		t.Errorf("stored/duplicates = %d/%d, want %d/%d", r.stored(), r.duplicates(), total-committed, committed)
	}
	if got := countRows(t, db, `SELECT count(*) FROM inbox`); got != total {
		t.Errorf("inbox rows = %d, want %d", got, total)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

// TestHelperConsumerProcess is the consumer process that TestConsumerKilledBetweenCommitAndAck
// kills: it SIGKILLs itself after its first batch committed, before acknowledging it.
func TestHelperConsumerProcess(t *testing.T) {
	if os.Getenv("SIDEBOX_INBOX_HELPER") != "consumer" {
		t.Skip("helper process only")
	}
	db, err := openDB(os.Getenv("HELPER_DB"))
	if err != nil {
		t.Fatal(err)
	}
	log := zap.NewNop()
	b := startBroker(t, os.Getenv("HELPER_AMQP"), log)
	c, err := NewConsumer(db, ConsumerConfig{Queue: os.Getenv("HELPER_QUEUE"), Prefetch: 100, BatchSize: 50, BatchWait: time.Second},
		WithConnection(b), WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	c.afterCommit = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	_ = c.Run(context.Background())
	t.Fatal("Run returned; the process should have been killed")
}

func TestConsumerDeclaresQueueAndBindings(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url := testenv.AMQPURL(t)
	conn := amqpConn(t, url)
	queue := testenv.Name(t, "inbox_declared")
	exchange := queue + "_x"
	setup := channel(t, conn)
	if err := setup.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_ = ch.Close()
		}
	})
	bindings, err := ParseBindings(exchange + ":order.*, " + exchange + ":invoice.paid")
	if err != nil {
		t.Fatal(err)
	}
	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl, Bindings: bindings})
	for i, key := range []string{"order.created", "invoice.paid", "invoice.created"} {
		err := setup.PublishWithContext(context.Background(), exchange, key, false, false,
			amqp.Publishing{MessageId: strconv.Itoa(i), Body: []byte(key)})
		if err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 20*time.Second, "2 routed messages stored", func() bool { return r.stored() == 2 })
	r.stop(t)
	var keys string
	if err := db.QueryRow(`SELECT string_agg(routing_key, ',' ORDER BY seq) FROM inbox WHERE exchange = $1`, exchange).Scan(&keys); err != nil {
		t.Fatal(err)
	}
	if keys != "order.created,invoice.paid" {
		t.Errorf("stored routing keys %q, want order.created,invoice.paid", keys)
	}
	if _, err := NewConsumer(db, ConsumerConfig{Queue: queue, AMQPURLs: []string{url}, Prefetch: 10, BatchSize: 20}); err == nil {
		t.Error("NewConsumer accepted a batch size above the prefetch")
	}
	for _, c := range []struct {
		cfg  ConsumerConfig
		opts []Option
		want string
	}{
		{ConsumerConfig{Queue: queue}, nil, "AMQPURLs or WithConnection"},
		{ConsumerConfig{Queue: queue, AMQPURLs: []string{url}}, []Option{WithConnection(startBroker(t, url, zap.NewNop()))}, "not both"},
		{ConsumerConfig{Queue: queue, AMQPURLs: []string{"http://u:secret@h/"}}, nil, "AMQPURLs"},
		{ConsumerConfig{Queue: queue, AMQPURLs: []string{url}, Table: "App.Inbox"}, nil, "Table"},
	} {
		_, err := NewConsumer(db, c.cfg, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("NewConsumer(%+v): err = %v, want one about %s, without the password", c.cfg, err, c.want)
		}
	}
}

// TestConsumerDrainsOnCancel cancels the consumer while it holds a batch that is still
// filling: Run stores and acknowledges it before returning.
func TestConsumerDrainsOnCancel(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_drain")
	// The first session consumes with the prefetch count of the largest message size
	// (2), and the first delivery's size calls for the configured 100: a second session
	// takes over. Only then may the deliveries the consumer holds be counted.
	full := make(chan struct{})
	r := startConsumerWith(t, db, url, ConsumerConfig{Queue: queue, Table: tbl, Prefetch: 100, BatchSize: 100, BatchWait: 10 * time.Second}, func(c *Consumer) {
		c.prefetchChanged = func(n int) {
			if n == 100 {
				close(full)
			}
		}
	})
	var msgs []amqp.Publishing
	for i := range 10 {
		msgs = append(msgs, amqp.Publishing{MessageId: strconv.Itoa(i)})
	}
	publish(t, conn, queue, msgs...)
	select {
	case <-full:
	case <-time.After(10 * time.Second):
		t.Fatal("the consumer did not move to the configured prefetch count")
	}
	// All ten are with the consumer (none ready in the queue), waiting for the batch to fill.
	testenv.Eventually(t, 10*time.Second, "the deliveries to reach the consumer", func() bool { return depth(t, conn, queue) == 0 })
	if r.received() != 0 {
		t.Fatalf("a batch was stored before BatchWait: received %d", r.received())
	}
	r.stop(t)
	if r.stored() != 10 {
		t.Errorf("stored %d on shutdown, want 10", r.stored())
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages after the drain, want 0", n)
	}
}
