package relay

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// A claim takes a key's run: its consecutive due rows from the head on, in seq order,
// up to the first row that is not due, retrying or behind a dead row. A retrying head
// goes alone. While one claim holds a key's head, no other claim takes any row of that
// key, and other keys still go to other claims.
func TestClaimTakesAKeysRun(t *testing.T) {
	t.Parallel()
	db, _, table := outboxDB(t)
	ins := func(key string, n int, extra string) {
		t.Helper()
		q := `INSERT INTO outbox (exchange, routing_key, payload, ordering_key` + extra + `)
			SELECT 'x', 'k', '\x00', $1` + map[string]string{
			"":                                     "",
			", available_at":                       ", now() + interval '1 hour'",
			", dead_at, attempts":                  ", now(), 10",
			", attempts":                           ", 1",
			", attempts, available_at, last_error": ", 1, now() + interval '1 hour', 'x'",
		}[extra] + ` FROM generate_series(1, $2)`
		if _, err := db.Exec(q, key, n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	ins("a", 7, "")               // a: 7 rows, then one not due, then 3 more
	ins("a", 1, ", available_at") //
	ins("a", 3, "")               //
	ins("b", 4, "")               // b: 4 rows, a dead one, 2 more
	ins("b", 1, ", dead_at, attempts")
	ins("b", 2, "")
	ins("c", 1, ", attempts") // c: a due retrying head, then 5 rows: the head alone
	ins("c", 5, "")
	ins("d", 3, ", attempts, available_at, last_error") // d: blocked by a retrying head
	ins("d", 3, "")
	ins("e", 600, "") // e: deeper than a batch

	q := newQueries(table)
	st := pg.NewStatements(db, pg.PrepareOn, "prepare", zap.NewNop())
	defer st.Close()
	ctx := context.Background()
	claim := func(batch int) map[string][]int64 {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		c, err := q.claim(ctx, st, tx, claimConfig(batch), true, nil, 4*batch+16, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]int64{}
		for _, rw := range c.rows {
			got[rw.orderingKey] = append(got[rw.orderingKey], rw.seq)
		}
		for k, seqs := range got {
			if !slices.IsSorted(seqs) {
				t.Errorf("key %s: rows not in seq order in the batch: %v", k, seqs)
			}
		}
		return got
	}
	seqs := func(from, n int64) []int64 {
		var s []int64
		for i := range n {
			s = append(s, from+i)
		}
		return s
	}
	// seq: a 1–7 (8 not due, 9–11), b 12–15 (16 dead, 17–18), c 19 retrying, 20–24,
	// d 25–27 retrying not due, 28–30, e 31–630.
	first := claim(100)
	want := map[string][]int64{"a": seqs(1, 7), "b": seqs(12, 4), "c": {19}, "e": seqs(31, 100-7-4-1)}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if !slices.Equal(first[k], want[k]) {
			t.Errorf("first claim, key %s: got seqs %v, want %v", k, first[k], want[k])
		}
	}
	// A second claim while the first is open: no row of a, b, c or e (their heads are
	// held), even though e has rows left.
	second := claim(500)
	if len(second) != 0 {
		t.Errorf("second claim took rows of keys held by the first: %v", second)
	}
	// A fresh key is taken by the second claim, the held ones still not.
	ins("f", 3, "")
	third := claim(500)
	if fmt.Sprint(third) != fmt.Sprint(map[string][]int64{"f": seqs(631, 3)}) {
		t.Errorf("third claim: got %v, want only key f's 3 rows", third)
	}
}

// A row in the middle of a pipelined run that the broker returns (unroutable) or nacks
// (a full queue with x-overflow=reject-publish) blocks its key; the later rows of its
// run, confirmed already, stay in the outbox untouched and go again after it once it
// is published: the consumer sees seq 0 1 3 4 5, then 2 3 4 5. A row that makes the
// broker close the channel (a missing exchange) takes the rest of the run with it, and
// its retries go alone: 0 1, then 2 3 4 5.
func TestFailureMidRunPutsBackTheRestOfTheRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, failKey, failExchange string
		first, after                []int64 // rows delivered before and after the fix
	}{
		{"returned", "nowhere", "", []int64{0, 1, 3, 4, 5}, []int64{2, 3, 4, 5}},
		{"nacked", "full", "", []int64{0, 1, 3, 4, 5}, []int64{2, 3, 4, 5}},
		// A missing exchange closes the channel: nothing after row 2 is routed, and
		// its retries go alone (a suspect), the rest of its key held back.
		// The rows before it may lose their confirms with the channel and go again
		// (duplicates): only first deliveries are compared.
		{"channel closed", "k", "missing_exchange", []int64{0, 1}, []int64{2, 3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
			fullQueue(t, url, exchange, "full")

			key := map[string]any{"ordering_key": "run"}
			var ids []string
			for i := range 6 {
				ex, rk := exchange, "k"
				if i == 2 {
					rk = tc.failKey
					if tc.failExchange != "" {
						ex = tc.failExchange
					}
				}
				ids = append(ids, insertRow(t, db, table, ex, rk, fmt.Sprint("run ", i), key))
			}
			seqOf := map[string]int64{} // message ID → position in the key
			for i, id := range ids {
				seqOf[id] = int64(i)
			}

			cfg := testConfig(table)
			cfg.MaxAttempts = 2
			startRelay(t, db, dsn, url, cfg)

			testenv.Eventually(t, 20*time.Second, "the failing row to be dead", func() bool {
				st, _ := stateOf(t, db, table, ids[2])
				return st.dead
			})
			for i, id := range ids {
				st, there := stateOf(t, db, table, id)
				switch {
				case i < 2 && there:
					t.Errorf("row %d, before the failed one, is still in the outbox", i)
				case i == 2 && (st.attempts != 2 || !st.dead):
					t.Errorf("the failed row has %d attempts, want 2", st.attempts)
				case i > 2 && (!there || st.attempts != 0 || st.dead):
					t.Errorf("row %d, after the failed one: in the outbox %v, attempts %d, dead %v; want kept untouched", i, there, st.attempts, st.dead)
				}
			}
			exact := tc.failExchange == ""
			got := func() []int64 {
				var seqs []int64
				seen := map[int64]bool{}
				for _, m := range s.messages() {
					seq := seqOf[m.MessageId]
					if !exact && seen[seq] {
						continue
					}
					seen[seq] = true
					seqs = append(seqs, seq)
				}
				return seqs
			}
			// The retries of the failed row went alone: nothing was sent again.
			if want := tc.first; !slices.Equal(got(), want) {
				t.Fatalf("while the row failed, the consumer got rows %v, want %v", got(), want)
			}

			// Fixed and revived, the row goes, and the rest of its run after it.
			if _, err := db.Exec(`UPDATE outbox SET exchange = $2, routing_key = 'k', dead_at = NULL, attempts = 0, available_at = now() WHERE id = $1`, ids[2], exchange); err != nil {
				t.Fatal(err)
			}
			want := append(slices.Clone(tc.first), tc.after...)
			if !exact {
				want = []int64{0, 1, 2, 3, 4, 5}
			}
			testenv.Eventually(t, 20*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
			testenv.Eventually(t, 10*time.Second, "every delivery", func() bool { return len(got()) >= len(want) })
			if !slices.Equal(got(), want) {
				t.Errorf("the consumer got rows %v, want %v", got(), want)
			}
			// The stamped x-outbox-seq is what a consumer checks: it goes back once,
			// at the failed row, when later rows went before it.
			if !exact {
				return
			}
			wantBack := 1
			var back int
			var last int64
			for i, m := range s.messages() {
				seq, _ := m.Headers["x-outbox-seq"].(int64)
				if i > 0 && seq < last {
					back++
				}
				last = seq
			}
			if back != wantBack {
				t.Errorf("x-outbox-seq went back %d times, want %d", back, wantBack)
			}
		})
	}
}

// fullQueue binds a queue that refuses every message (max length 0, reject-publish:
// the broker nacks) to exchange with routing key rk.
func fullQueue(t *testing.T, url, exchange, rk string) {
	t.Helper()
	queue := testenv.Name(t, "full")
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, rk, exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
		}
	})
}

// Of each key's run only the confirmed prefix stays confirmed; the first row that is not
// keeps its outcome, every later row of its key is put back (unknown). Unkeyed rows and
// other keys are not affected.
func TestSettleRunsKeepsConfirmedPrefix(t *testing.T) {
	t.Parallel()
	k := func(key string, seq int64) row { return row{keyed: true, orderingKey: key, seq: seq} }
	rows := []row{k("a", 1), k("b", 2), k("a", 3), k("a", 4), k("b", 5), k("a", 6), k("c", 7), k("c", 8), {seq: 9}}
	ok, nack, none := result{outcome: confirmed}, result{outcome: failed, kind: failNacked}, result{}
	res := []result{ok, ok, nack, ok, none, nack, none, ok, ok}
	want := []outcome{confirmed, confirmed, failed, unknown, unknown, unknown, unknown, unknown, confirmed}
	if n := settleRuns(rows, res); n != 2 {
		t.Errorf("put back %d confirmed rows, want 2 (a:4, c:8)", n)
	}
	for i := range rows {
		if res[i].outcome != want[i] {
			t.Errorf("row %d (key %q seq %d): outcome %d, want %d", i, rows[i].orderingKey, rows[i].seq, res[i].outcome, want[i])
		}
	}
}

// A row that must go alone (a suspect) behind rows of its key that may be pipelined:
// the rows before it go, the run ends at it, and it goes alone at the next claim. The
// key drains. (Its hold used to drop the earlier rows too, and the same run was
// claimed for ever.)
func TestSuspectBehindItsKeysEarlierRowsDrains(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "rk")
	var ids []string
	for i := range 3 {
		ids = append(ids, insertRow(t, db, table, exchange, "rk", fmt.Sprint("r", i), map[string]any{"ordering_key": "k"}))
	}
	r := startRelay(t, db, dsn, url, testConfig(table), func(r *Relay) { r.suspects[ids[1]] = time.Now() })
	s.waitDistinct(t, 3, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "the outbox to drain", func() bool {
		return outboxCount(t, db, table, "") == 0
	})
	var got []string
	for _, m := range s.messages() {
		got = append(got, m.MessageId)
	}
	if !slices.Equal(got, ids) {
		t.Errorf("arrival order %v, want %v", got, ids)
	}
	if n := r.claims.Load(); n > 50 {
		t.Errorf("%d claims for three rows: the relay claimed the same run again and again", n)
	}
}

// The gate holds a key from its held row on; the key's earlier rows and other keys go.
func TestRunGateHoldsFromTheHeldRowOn(t *testing.T) {
	t.Parallel()
	k := func(key string, seq int64) row { return row{keyed: true, orderingKey: key, seq: seq} }
	rows := []row{k("a", 1), k("a", 2), k("b", 3), k("a", 4), {seq: 5}}
	var g runGate
	g.hold(rows[1])
	g.hold(rows[3]) // later: the earlier hold stands
	if got := g.drop(rows, []int{0, 1, 2, 3, 4}); !slices.Equal(got, []int{0, 2, 4}) {
		t.Errorf("kept %v, want [0 2 4]: a's row before the held one, b, the unkeyed row", got)
	}
}
