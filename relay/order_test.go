package relay

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// Three relays on one table, 20 ordering keys × 100 rows written while they run (plus
// unkeyed rows): every key's rows arrive once each, in the order they were written,
// x-outbox-seq growing within each key, though each key's runs are pipelined.
func TestThreeRelaysKeepPerKeyOrder(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	cfg := testConfig(table)
	cfg.BatchSize = 50 // many small batches: more interleaving between the relays
	for range 3 {
		startRelay(t, db, dsn, url, cfg)
	}

	const keys, perKey, unkeyed = 20, 100, 200
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, keys+1)
	write := func(key string, n int) {
		for i := range n {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				errs <- err
				return
			}
			_, err = outbox.Write(ctx, tx, outbox.Message{
				Exchange: exchange, RoutingKey: "k", Payload: []byte(strconv.Itoa(i)),
				OrderingKey: key, Headers: map[string]any{"key": key, "n": i},
			})
			if err == nil {
				err = tx.Commit()
			} else {
				_ = tx.Rollback()
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}
	for k := range keys {
		wg.Go(func() { write(fmt.Sprintf("key-%02d", k), perKey) })
	}
	wg.Go(func() { write("", unkeyed) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write: %v", err)
	}

	s.waitDistinct(t, keys*perKey+unkeyed, 60*time.Second)
	next := map[string]int64{}
	lastSeq := map[string]int64{}
	for _, m := range s.messages() {
		key, _ := m.Headers["key"].(string)
		n, _ := m.Headers["n"].(int64)
		if key == "" {
			continue
		}
		// What any consumer checks: x-outbox-seq grows within x-ordering-key.
		if k, _ := m.Headers["x-ordering-key"].(string); k != key {
			t.Fatalf("message %d of key %s has x-ordering-key %q", n, key, k)
		}
		seq, ok := m.Headers["x-outbox-seq"].(int64)
		if !ok || seq <= lastSeq[key] {
			t.Fatalf("key %s: message %d has x-outbox-seq %v after %d", key, n, m.Headers["x-outbox-seq"], lastSeq[key])
		}
		lastSeq[key] = seq
		if n != next[key] {
			t.Fatalf("key %s: got message %d, want %d (out of order or duplicated)", key, n, next[key])
		}
		next[key]++
	}
	for k := range keys {
		if key := fmt.Sprintf("key-%02d", k); next[key] != perKey {
			t.Errorf("key %s: %d messages, want %d", key, next[key], perKey)
		}
	}
	if s.total() != keys*perKey+unkeyed {
		t.Errorf("%d deliveries, want %d", s.total(), keys*perKey+unkeyed)
	}
}

// A head that keeps failing holds back the rest of its key, and only its key; once it is
// fixed and revived, the key goes on in order (the rest of its run again).
func TestFailingHeadBlocksOnlyItsKey(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	key := func(k string) map[string]any { return map[string]any{"ordering_key": k} }
	head := insertRow(t, db, table, exchange, "nowhere", "blocked 0", key("blocked"))
	var blocked, free []string
	for i := 1; i <= 5; i++ {
		blocked = append(blocked, insertRow(t, db, table, exchange, "k", fmt.Sprint("blocked ", i), key("blocked")))
		free = append(free, insertRow(t, db, table, exchange, "k", fmt.Sprint("free ", i), key("free")))
	}

	cfg := testConfig(table)
	cfg.MaxAttempts = 2
	cfg.PollInterval = 200 * time.Millisecond
	r := startRelay(t, db, dsn, url, cfg)

	s.waitDistinct(t, len(free), 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "the failing head to be dead", func() bool {
		st, _ := stateOf(t, db, table, head)
		return st.dead
	})
	// The head's first attempt went pipelined with the rest of its run, which the
	// broker took: those rows were delivered once, and stay in the outbox, untouched,
	// to go again after the head (TestFailureMidRunPutsBackTheRestOfTheRun). A few
	// more rounds: the key stays blocked, nothing of it is sent again.
	sent := map[string]int{}
	for _, id := range blocked {
		sent[id] = s.count(id)
		if st, there := stateOf(t, db, table, id); !there || st.attempts != 0 {
			t.Fatalf("row %s of the blocked key: in the outbox %v, attempts %d; want kept untouched", id, there, st.attempts)
		}
	}
	claims := r.claims.Load()
	testenv.Eventually(t, 10*time.Second, "more claims", func() bool { return r.claims.Load() > claims+3 })
	for _, id := range blocked {
		if n := s.count(id); n != sent[id] {
			t.Fatalf("message %s of the blocked key was sent again while its head is dead", id)
		}
	}
	for _, id := range free {
		if n := s.count(id); n != 1 {
			t.Errorf("message %s of the free key arrived %d times", id, n)
		}
	}

	// Fix the head's routing and revive it: the key is published in order.
	if _, err := db.Exec(`UPDATE outbox SET routing_key = 'k', dead_at = NULL, attempts = 0, available_at = now() WHERE id = $1`, head); err != nil {
		t.Fatal(err)
	}
	s.waitDistinct(t, len(free)+1+len(blocked), 10*time.Second)
	testenv.Eventually(t, 10*time.Second, "the blocked key to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	var order []string
	for _, m := range s.messages() {
		if string(m.Body) >= "blocked" && string(m.Body) < "blockee" {
			order = append(order, string(m.Body))
		}
	}
	// Whatever went before the head's failure, the key ends with all its rows in order.
	if len(order) < 6 {
		t.Fatalf("blocked key arrived as %v, want it to end with blocked 0..5 in order", order)
	}
	for i, body := range order[len(order)-6:] {
		if want := fmt.Sprint("blocked ", i); body != want {
			t.Fatalf("blocked key arrived as %v, want it to end with blocked 0..5 in order", order)
		}
	}
}
