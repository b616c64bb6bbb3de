package inbox

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// TestConsumerBoundsBatchesInBytes: a batch holds at most BatchBytes of payloads (a
// larger message alone), and a message too large to ever be sent to PostgreSQL is
// rejected with a reason while the deliveries after it are stored.
func TestConsumerBoundsBatchesInBytes(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_bytes")
	var msgs []amqp.Publishing
	add := func(id string, size int) {
		msgs = append(msgs, amqp.Publishing{MessageId: id, Body: bytes.Repeat([]byte{'a' + byte(len(msgs)%26)}, size)})
	}
	for i := range 20 {
		add(fmt.Sprintf("small-%02d", i), 1000)
	}
	add("big", 5000)     // above the batch bound: stored alone
	add("huge", 100_000) // above what one statement may carry: rejected
	for i := range 10 {
		add(fmt.Sprintf("after-%02d", i), 1000)
	}
	publish(t, conn, queue, msgs...)
	total := len(msgs)

	// A long BatchWait: batches close on their byte bound, not on time.
	cfg := ConsumerConfig{Queue: queue, Table: tbl, BatchBytes: 3000, BatchWait: time.Second}
	r := startConsumerWith(t, db, url, cfg, func(c *Consumer) { c.statementLimit = 150_000 })
	testenv.Eventually(t, 30*time.Second, "every delivery settled", func() bool {
		return r.stored()+r.duplicates()+r.rejected(RejectTooLarge)+r.rejected(RejectUnstorable) >= total
	})
	r.stop(t)

	if r.stored() != total-1 || r.rejected(RejectTooLarge) != 1 {
		t.Errorf("stored %d, rejected as too large %d; want %d and 1", r.stored(), r.rejected(RejectTooLarge), total-1)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id = 'huge'`); n != 0 {
		t.Error("the message above the statement limit was stored")
	}
	// Each batch is one transaction: its rows share received_at.
	rows, err := db.Query(`SELECT count(*), sum(length(payload)), string_agg(message_id, ',' ORDER BY seq)
		FROM inbox GROUP BY received_at ORDER BY min(seq)`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	batches := 0
	for rows.Next() {
		var n, size int
		var ids string
		if err := rows.Scan(&n, &size, &ids); err != nil {
			t.Fatal(err)
		}
		batches++
		if size > cfg.BatchBytes && n > 1 {
			t.Errorf("a batch of %d rows holds %d payload bytes, above the bound %d: %s", n, size, cfg.BatchBytes, ids)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if batches < 11 {
		t.Errorf("%d batches, want at least 11 (3 rows of 1000 bytes per batch, the big one alone)", batches)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

// TestConsumerStoresLargeMessagesInChunks: messages above BatchBytes and
// inboxdb.LargePayloads go to the database in chunks (pg.Chunk) before their insert;
// each is stored whole, with its properties, once however often it is delivered, and
// no large object is left behind. It passes on the code before chunked writes too; it
// guards the chunked path.
func TestConsumerStoresLargeMessagesInChunks(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_chunks")
	sizes := map[string]int{"a": inboxdb.LargePayloads + 1, "b": 2*pg.Chunk + 3, "c": 2 * pg.Chunk, "small": 10}
	bodies := map[string][]byte{}
	var msgs []amqp.Publishing
	for _, id := range []string{"a", "b", "c", "small", "b"} { // b twice: a duplicate
		body := make([]byte, sizes[id])
		for j := range body {
			body[j] = byte(j*7 + len(id))
		}
		bodies[id] = body
		msgs = append(msgs, amqp.Publishing{MessageId: id, Type: "T", Body: body,
			Headers: amqp.Table{"x-ordering-key": "k"}})
	}
	publish(t, conn, queue, msgs...)
	r := startConsumer(t, db, url, ConsumerConfig{Queue: queue, Table: tbl})
	testenv.Eventually(t, 60*time.Second, "every delivery settled", func() bool { return r.stored()+r.duplicates() >= len(msgs) })
	r.stop(t)
	if r.stored() != len(sizes) || r.duplicates() != 1 {
		t.Errorf("stored %d, duplicates %d; want %d and 1", r.stored(), r.duplicates(), len(sizes))
	}
	for id, body := range bodies {
		sum := sha256.Sum256(body)
		if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id = $1 AND sha256(payload) = $2
			AND message_type = 'T' AND ordering_key = 'k'`, id, sum[:]); n != 1 {
			t.Errorf("message %s (%d bytes): %d rows with its body and properties, want 1", id, len(body), n)
		}
	}
	if n := countRows(t, db, `SELECT count(*) FROM pg_largeobject_metadata`); n != 0 {
		t.Errorf("%d large objects left", n)
	}
}
