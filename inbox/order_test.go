package inbox

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// TestOrderedProcessingFollowsDeliveryOrder runs the consumer with its default two
// workers and an ordered Processor at the same time: for every key, the effects happen
// in the order RabbitMQ delivered the messages (the publisher's order here).
func TestOrderedProcessingFollowsDeliveryOrder(t *testing.T) {
	t.Parallel()
	// 40 keys in turn: every batch shares all its keys with the one before. 600 keys at
	// random, a few unkeyed: a batch shares some keys, and stores its other rows first.
	rng := rand.New(rand.NewPCG(1, 2))
	for name, keyOf := range map[string]func(i int) string{
		"40 keys in turn": func(i int) string { return "key-" + strconv.Itoa(i%40) },
		"600 keys at random": func(i int) string {
			if i%10 == 0 {
				return ""
			}
			return "key-" + strconv.Itoa(rng.IntN(600))
		},
	} {
		var keys []string
		for i := range 4000 {
			keys = append(keys, keyOf(i))
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testOrderedProcessing(t, keys)
		})
	}
}

// testOrderedProcessing publishes one message per entry of keys ("" = no key) and
// checks that an ordered Processor's effects follow the publish order per key.
func testOrderedProcessing(t *testing.T, keys []string) {
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_order")
	if _, err := db.Exec(`CREATE TABLE effects (n bigint GENERATED ALWAYS AS IDENTITY, k text, c int)`); err != nil {
		t.Fatal(err)
	}
	total := len(keys)
	msgs := make([]amqp.Publishing, total)
	place := map[string]int{}
	for i, k := range keys {
		msgs[i] = amqp.Publishing{MessageId: fmt.Sprintf("m-%05d", i), Body: []byte(strconv.Itoa(place[k]))} // its place within its key
		if k != "" {
			msgs[i].Headers = amqp.Table{"x-ordering-key": k}
		}
		place[k]++
	}
	publish(t, conn, queue, msgs...)

	p := newProcessor(t, db, ProcessorConfig{Consumer: queue, Ordered: true, BatchSize: 64, PollInterval: 10 * time.Millisecond},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO effects (k, c) VALUES ($1, $2)`, msg.OrderingKey, string(msg.Payload))
			return err
		})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl})
	testenv.Eventually(t, 60*time.Second, "all messages stored", func() bool { return r.stored() == total })
	testenv.Eventually(t, 60*time.Second, "all messages processed", func() bool {
		return countRows(t, db, `SELECT count(*) FROM effects`) == total
	})
	// A message is out of order when an earlier effect of its key has a higher place.
	late := countRows(t, db, `SELECT count(*) FROM (
		SELECT c < max(c) OVER (PARTITION BY k ORDER BY n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS late FROM effects
		WHERE k <> '') e
		WHERE late`)
	if late != 0 {
		t.Errorf("%d of %d messages were processed after a later message of their key", late, total)
	}
	if got := countRows(t, db, `SELECT count(*) FROM effects e WHERE k <> '' AND c <> (SELECT count(*) FROM effects f WHERE f.k = e.k AND f.n < e.n)`); got != 0 {
		t.Errorf("%d effects are not at their place in their key's sequence", got)
	}
}
