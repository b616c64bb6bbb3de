package relay

import (
	"context"
	"fmt"
	"slices"
	"testing"

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
	db, _ := testenv.DB(t)
	table := pg.MustParseTable("outbox")
	migrate(t, db, table)
	ins := func(key string, n int, extra string) {
		t.Helper()
		q := `INSERT INTO outbox (exchange, routing_key, payload, ordering_key` + extra + `)
			SELECT 'x', 'k', '\x00', $1` + map[string]string{
			"":                                    "",
			", available_at":                      ", now() + interval '1 hour'",
			", dead_at, attempts":                 ", now(), 10",
			", attempts":                          ", 1",
			", attempts, available_at, last_error": ", 1, now() + interval '1 hour', 'x'",
		}[extra] + ` FROM generate_series(1, $2)`
		if _, err := db.Exec(q, key, n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	ins("a", 7, "")                // a: 7 rows, then one not due, then 3 more
	ins("a", 1, ", available_at")  //
	ins("a", 3, "")                //
	ins("b", 4, "")                // b: 4 rows, a dead one, 2 more
	ins("b", 1, ", dead_at, attempts")
	ins("b", 2, "")
	ins("c", 1, ", attempts") // c: a due retrying head, then 5 rows: the head alone
	ins("c", 5, "")
	ins("d", 3, ", attempts, available_at, last_error") // d: blocked by a retrying head
	ins("d", 3, "")
	ins("e", 600, "") // e: deeper than a batch

	q := newQueries(table)
	st := pg.NewStatements(db, pg.PrepareOn, zap.NewNop())
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
