package inbox

import (
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// TestConsumerHoldsDeliveriesWhileTheDatabaseIsDown cuts the consumer's database
// connection: it stops being ready, acknowledges nothing, and stores everything once the
// database is back.
func TestConsumerHoldsDeliveriesWhileTheDatabaseIsDown(t *testing.T) {
	t.Parallel()
	db, dbURL, tbl := migrated(t, "inbox")
	proxy := testenv.Proxy(t, dbURL)
	viaProxy, err := sql.Open("postgres", proxy.URL(dbURL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = viaProxy.Close() })
	url, conn, queue := testQueue(t, "inbox_dbdown")

	r := startConsumer(t, viaProxy, url, ConsumerConfig{Queue: queue, Table: tbl})
	proxy.Cut(t)
	publish(t, conn, queue, numbered("", 100)...)
	testenv.Eventually(t, 20*time.Second, "the consumer to report not ready", func() bool { return !r.c.Ready() })
	if n := countRows(t, db, `SELECT count(*) FROM inbox`); n != 0 {
		t.Fatalf("%d rows stored through a cut connection", n)
	}
	if r.received() == 0 {
		t.Fatal("nothing received while the database was down")
	}

	proxy.Restore(t)
	testenv.Eventually(t, 30*time.Second, "100 rows stored", func() bool { return r.stored() == 100 })
	testenv.Eventually(t, 10*time.Second, "ready again", r.c.Ready)
	r.stop(t)
	if n := countRows(t, db, `SELECT count(*) FROM inbox`); n != 100 {
		t.Errorf("rows = %d, want 100", n)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

// TestConsumerLosesTheBrokerBetweenCommitAndAck cuts the AMQP connection right after the
// first batch committed: the consumer reconnects, the batch is redelivered and absorbed.
func TestConsumerLosesTheBrokerBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_amqpcut")
	proxy := testenv.Proxy(t, url)
	const total = 300

	cut := make(chan struct{})
	var once sync.Once
	r := startConsumerWith(t, db, proxy.URL(url), ConsumerConfig{Queue: queue, Table: tbl, Workers: 1}, func(c *Consumer) {
		c.afterCommit = func() {
			once.Do(func() { proxy.Cut(t); close(cut) })
		}
	})
	// Publish only once the consumer is ready: the first commit cuts the connection.
	publish(t, conn, queue, numbered("", total)...)
	<-cut
	testenv.Eventually(t, 20*time.Second, "the consumer to report not ready", func() bool { return !r.c.Ready() })
	proxy.Restore(t)
	// The cut came after the first commit and before its ack: what the consumer held then
	// comes back once it reconnects, and is absorbed. Done when every message is stored,
	// every delivery is accounted for (nothing left in the client's buffer) and nothing
	// waits in the queue; stopping then acknowledges what the consumer still holds.
	testenv.Eventually(t, 30*time.Second, "every message stored and every redelivery absorbed", func() bool {
		return r.stored() == total && r.duplicates() >= 1 && r.received() == total+r.duplicates() && depth(t, conn, queue) == 0
	})
	r.stop(t)
	// The batches committed before the cut were redelivered and absorbed.
	if r.duplicates() < 1 || r.received() != total+r.duplicates() {
		t.Errorf("received %d, stored %d, duplicates %d: want the batch committed before the cut redelivered (≥ 1 duplicate) and received = %d + duplicates",
			r.received(), r.stored(), r.duplicates(), total)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox`); n != total {
		t.Errorf("rows = %d, want %d", n, total)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}
