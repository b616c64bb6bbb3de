package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/testenv"
)

// storeMany inserts rows id:key (key "" = none) in one statement, in the given order.
func storeMany(t *testing.T, db *sql.DB, consumer string, ids, keys []string) {
	t.Helper()
	if _, err := db.Exec(`INSERT INTO inbox (consumer, message_id, payload, ordering_key)
		SELECT $1, u.id, convert_to('payload of ' || u.id, 'UTF8'), nullif(u.k, '')
		FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(id, k, n) ORDER BY u.n`,
		consumer, pq.StringArray(ids), pq.StringArray(keys)); err != nil {
		t.Fatalf("store %d rows: %v", len(ids), err)
	}
}

// batches runs ProcessOnce until a call handles nothing and returns the message ids
// each call handed to the handler, in order. The handler records into cur.
func batches(t *testing.T, p *Processor, cur *[]string) [][]string {
	t.Helper()
	var out [][]string
	for {
		*cur = nil
		n, err := p.ProcessOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		out = append(out, *cur)
	}
}

// An ordered batch hands the handler a key's consecutive rows, in arrival order: one key
// moves a whole batch at a time, and keys share a batch.
func TestProcessorOrderedBatchTakesAKeysRun(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	storeRows(t, db, "svc", "a1:a", "a2:a", "b1:b", "n1", "a3:a", "b2:b")
	var cur []string
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 10},
		func(ctx context.Context, tx *sql.Tx, msg Message) error { cur = append(cur, msg.MessageID); return nil })
	if got := fmt.Sprint(batches(t, p, &cur)); got != "[[a1 a2 b1 n1 a3 b2]]" {
		t.Errorf("batches %s, want [[a1 a2 b1 n1 a3 b2]]", got)
	}

	// One key alone: batches of BatchSize, in order.
	var ids, keys []string
	for i := range 10 {
		ids, keys = append(ids, fmt.Sprintf("h%02d", i)), append(keys, "hot")
	}
	storeMany(t, db, "svc", ids, keys)
	p = newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 4},
		func(ctx context.Context, tx *sql.Tx, msg Message) error { cur = append(cur, msg.MessageID); return nil })
	if got := fmt.Sprint(batches(t, p, &cur)); got != "[[h00 h01 h02 h03] [h04 h05 h06 h07] [h08 h09]]" {
		t.Errorf("batches of one key %s, want [[h00 h01 h02 h03] [h04 h05 h06 h07] [h08 h09]]", got)
	}
}

// handled lists the processed rows of consumer svc per key, in processing order, as
// "key:id id ..." joined by "; " (keys in order, "" for none).
func handledByKey(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query(`SELECT coalesce(i.ordering_key, ''), string_agg(e.message_id, ' ' ORDER BY e.n)
		FROM effects e JOIN inbox i ON i.consumer = 'svc' AND i.message_id = e.message_id
		GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k, ids string
		if err := rows.Scan(&k, &ids); err != nil {
			t.Fatal(err)
		}
		out = append(out, k+":"+ids)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "; ")
}

// orderedEffects makes an effects table that records the processing order.
func orderedEffects(t *testing.T, db *sql.DB) {
	t.Helper()
	if _, err := db.Exec(`CREATE TABLE effects (n bigint GENERATED ALWAYS AS IDENTITY, message_id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
}

// A retrying row blocks the rest of its key, in its own batch and later, and nothing
// else; once it succeeds its key goes on in order.
func TestProcessorOrderedRetryingRowBlocksOnlyItsKey(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	orderedEffects(t, db)
	storeRows(t, db, "svc", "a1:a", "a2:a", "a3:a", "b1:b", "b2:b", "n1", "n2")
	failing := map[string]bool{"a2": true}
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 10, RetryBackoff: time.Hour, RetryBackoffMax: time.Hour},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			if failing[msg.MessageID] {
				return errors.New("not yet")
			}
			return recordEffect(ctx, tx, msg)
		})
	// a1, a2 (fails), b1, b2, n1, n2 handled; a3 waits behind a2.
	if n, err := p.ProcessOnce(context.Background()); n != 6 || err != nil {
		t.Fatalf("ProcessOnce = %d, %v; want 6 rows handled", n, err)
	}
	storeRows(t, db, "svc", "b3:b", "a4:a", "n3")
	drain := func() {
		t.Helper()
		for {
			n, err := p.ProcessOnce(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
		}
	}
	drain()
	if got, want := handledByKey(t, db), ":n1 n2 n3; a:a1; b:b1 b2 b3"; got != want {
		t.Errorf("with a2 retrying: handled %q, want %q", got, want)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id IN ('a3', 'a4') AND attempts = 0 AND processed_at IS NULL`); n != 2 {
		t.Errorf("a3 and a4 were touched while a2 was retrying")
	}

	// a2 is due again and succeeds: its key goes on, in order.
	failing["a2"] = false
	if _, err := db.Exec(`UPDATE inbox SET available_at = now() WHERE message_id = 'a2'`); err != nil {
		t.Fatal(err)
	}
	drain()
	if got, want := handledByKey(t, db), ":n1 n2 n3; a:a1 a2 a3 a4; b:b1 b2 b3"; got != want {
		t.Errorf("after a2's retry: handled %q, want %q", got, want)
	}
}

// A dead row blocks the rest of its key for good, and nothing else: other keys and
// unkeyed rows, also those stored later, are processed.
func TestProcessorOrderedDeadRowBlocksOnlyItsKey(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	orderedEffects(t, db)
	storeRows(t, db, "svc", "a1:a", "b1:b", "a2:a", "n1", "a3:a", "b2:b")
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 10, MaxAttempts: 1},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			if msg.MessageID == "a2" {
				return errors.New("broken for good")
			}
			return recordEffect(ctx, tx, msg)
		})
	drain(t, db, p)
	storeRows(t, db, "svc", "a4:a", "b3:b", "n2", "c1:c")
	drain(t, db, p)
	if got, want := handledByKey(t, db), ":n1 n2; a:a1; b:b1 b2 b3; c:c1"; got != want {
		t.Errorf("handled %q, want %q", got, want)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id = 'a2' AND dead_at IS NOT NULL`); n != 1 {
		t.Errorf("a2 is not dead")
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id IN ('a3', 'a4') AND attempts = 0 AND processed_at IS NULL AND dead_at IS NULL`); n != 2 {
		t.Errorf("a3 and a4 were touched behind the dead a2")
	}
}

// While one processor holds a key's head, another takes none of that key's rows, and
// the other keys' and unkeyed rows all the same.
func TestOrderedProcessorsNeverShareAKey(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	orderedEffects(t, db)
	storeRows(t, db, "svc", "a1:a", "a2:a", "b1:b", "a3:a", "b2:b")

	holding, release := make(chan struct{}), make(chan struct{})
	first := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 1},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			if msg.MessageID == "a1" {
				close(holding)
				<-release
			}
			return recordEffect(ctx, tx, msg)
		})
	done := make(chan error, 1)
	go func() {
		_, err := first.ProcessOnce(context.Background())
		done <- err
	}()
	select {
	case <-holding:
	case err := <-done:
		t.Fatalf("the first processor's batch did not hold a1 (%v)", err)
	}
	storeRows(t, db, "svc", "n1")

	var seen []string
	second := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 10},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			seen = append(seen, msg.MessageID)
			return recordEffect(ctx, tx, msg)
		})
	for {
		n, err := second.ProcessOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if got := strings.Join(seen, " "); got != "b1 b2 n1" {
		t.Errorf("while a1 was held the second processor handled %q, want b1 b2 n1", got)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	drain(t, db, second)
	if got, want := handledByKey(t, db), ":n1; a:a1 a2 a3; b:b1 b2"; got != want {
		t.Errorf("handled %q, want %q", got, want)
	}
}

// Two ordered processors run on one hot key, a hundred other keys and unkeyed rows, some
// stored while they run, with failures and retries: every row is processed once, per
// key in arrival order, and no two processors ever hold rows of one key together.
func TestOrderedProcessorsKeepKeyOrderConcurrently(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	if _, err := db.Exec(`CREATE TABLE effects (n bigint GENERATED ALWAYS AS IDENTITY, k text, seq bigint, proc int)`); err != nil {
		t.Fatal(err)
	}
	const total, parts = 1200, 4
	var ids, keys []string
	for i := range total {
		k := "hot"
		switch {
		case i%20 == 19:
			k = ""
		case i%2 == 1:
			k = fmt.Sprintf("key-%02d", i%200/2)
		}
		ids, keys = append(ids, fmt.Sprintf("m%04d", i)), append(keys, k)
	}
	part := total / parts
	storeMany(t, db, "svc", ids[:part], keys[:part])

	// holder is the processor whose transaction holds rows of a key: from its first
	// handler call for the key until just before it commits.
	var mu sync.Mutex
	holder := map[string]int{}
	var shared, failures atomic.Int64
	handler := func(proc int) Handler {
		return func(ctx context.Context, tx *sql.Tx, msg Message) error {
			if msg.OrderingKey != "" {
				mu.Lock()
				if h, ok := holder[msg.OrderingKey]; ok && h != proc {
					shared.Add(1)
				}
				holder[msg.OrderingKey] = proc
				mu.Unlock()
			}
			if msg.Attempts == 0 && strings.HasSuffix(msg.MessageID, "37") {
				failures.Add(1)
				return errors.New("first attempt fails")
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO effects (k, seq, proc) SELECT ordering_key, seq, $3 FROM inbox WHERE consumer = $1 AND message_id = $2`,
				msg.Consumer, msg.MessageID, proc)
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for proc := range 2 {
		// Warnings shown: once, under make test's load, processor 0 handled nothing
		// while processor 1 handled every row; a failing ProcessOnce would say why.
		p, err := NewProcessor(db, ProcessorConfig{Consumer: "svc", Ordered: true, BatchSize: 16, PollInterval: 5 * time.Millisecond,
			RetryBackoff: time.Millisecond, RetryBackoffMax: 5 * time.Millisecond}, handler(proc),
			WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).With(zap.Int("processor", proc))))
		if err != nil {
			t.Fatal(err)
		}
		p.beforeCommit = func() {
			mu.Lock()
			defer mu.Unlock()
			for k, h := range holder {
				if h == proc {
					delete(holder, k)
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	for i := part; i < total; i += part {
		storeMany(t, db, "svc", ids[i:i+part], keys[i:i+part])
	}
	testenv.Eventually(t, 60*time.Second, "every row processed", func() bool {
		return countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL`) == total
	})
	cancel()
	wg.Wait()

	if n := shared.Load(); n != 0 {
		t.Errorf("%d times a handler ran while another transaction held rows of its key", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM effects`); n != total {
		t.Errorf("effects = %d, want %d: once per row", n, total)
	}
	if n := countRows(t, db, `SELECT count(DISTINCT seq) FROM effects`); n != total {
		t.Errorf("distinct rows in effects = %d, want %d", n, total)
	}
	late := countRows(t, db, `SELECT count(*) FROM (
		SELECT seq < max(seq) OVER (PARTITION BY k ORDER BY n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS late
		FROM effects WHERE k IS NOT NULL) e WHERE late`)
	if late != 0 {
		t.Errorf("%d rows were processed after a later row of their key", late)
	}
	for proc := range 2 {
		if countRows(t, db, `SELECT count(*) FROM effects WHERE proc = $1 AND k = 'hot'`, proc) == 0 {
			t.Logf("processor %d handled no row of the hot key", proc)
		}
		if countRows(t, db, `SELECT count(*) FROM effects WHERE proc = $1`, proc) == 0 {
			t.Errorf("processor %d handled nothing: the test does not run two processors at once", proc)
		}
	}
	if n := failures.Load(); n != total/100 {
		t.Errorf("%d first attempts failed, want %d", n, total/100)
	}
}
