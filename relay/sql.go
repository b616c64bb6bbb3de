package relay

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
)

// queries holds the relay's SQL, written for one table.
type queries struct {
	claimSQL  [2][2]string // [keyedFirst][afterCursor]
	remove    string
	fail      string
	flag      [2]string // lower, raise the wake-up flag
	tableName string
}

// asyncCommit makes the current transaction commit without waiting for its WAL flush.
// The relay's own writes only remove published rows, count attempts and move the
// wake-up flag: should the database crash before the flush, rows come back and are
// published again (a duplicate, never a loss), and the flag is set again. The claim
// statement does the same with set_config for the batch's transaction.
const asyncCommit = `SET LOCAL synchronous_commit TO off`

// claimColumns are the columns of a claimed row, in scan order.
const claimColumns = `o.id::text, o.exchange, o.routing_key, o.payload, o.message_type, o.content_type,
        o.headers::text, o.ordering_key, o.created_at, o.attempts, o.seq`

// newQueries builds the SQL for table t.
//
// The claim takes one batch in one statement, in two parts:
//   - keyed rows: a loose index scan walks the distinct ordering keys that have live rows
//     (outbox_ordering_idx), a few index probes per key, starting after a cursor so that
//     every key gets its turn. The first live row of a key is its head; it is eligible
//     when it is due and no dead row of the same key precedes it (outbox_dead_idx).
//     The walk stops after enough eligible heads or after a bounded number of keys, so
//     a claim costs O(batch) probes however deep the per-key backlogs are.
//   - unkeyed rows: due rows in order of due time, straight from outbox_unkeyed_idx.
//
// Each part locks with FOR UPDATE SKIP LOCKED while it scans, so concurrent batches
// and relays take disjoint rows. A head that is in flight stays locked and present,
// so its successors cannot become heads: one row per key in flight, in seq order.
// The part named first takes up to the batch size and the other fills the rest; the
// relay alternates which goes first so neither starves the other. A last row carries
// bookkeeping: the next due time, the wake-up flag and where the walk stopped.
func newQueries(t pg.Table) queries {
	q := queries{
		tableName: t.String(),
	}
	// One simple-protocol round trip, one implicit transaction: setval takes a
	// transaction ID, and its commit need not wait for a WAL flush. The name is a
	// validated identifier, safe in a literal.
	for v := range 2 {
		q.flag[v] = fmt.Sprintf(`%s; SELECT setval('%s', %d)`, asyncCommit, t.Ident("_wakeup"), v)
	}
	for kf := range 2 {
		for ac := range 2 {
			q.claimSQL[kf][ac] = claimSQL(t, kf == 1, ac == 1)
		}
	}
	q.remove = `DELETE FROM ` + t.String() + ` WHERE id = ANY($1::uuid[])
RETURNING extract(epoch FROM clock_timestamp() - greatest(created_at, available_at))::float8`
	q.fail = `UPDATE ` + t.String() + ` o SET attempts = o.attempts + 1, last_error = f.err,
    available_at = clock_timestamp() + make_interval(secs => f.delay),
    dead_at = CASE WHEN o.attempts + 1 >= $4 OR f.permanent THEN clock_timestamp() END
FROM unnest($1::uuid[], $2::text[], $3::float8[], $5::bool[]) AS f(id, err, delay, permanent)
WHERE o.id = f.id
RETURNING o.id::text, o.attempts, o.dead_at IS NOT NULL`
	return q
}

// claimSQL parameters: $1 batch size, $2 walk cursor (when afterCursor), $3 most keys
// the walk visits.
func claimSQL(t pg.Table, keyedFirst, afterCursor bool) string {
	tbl := t.String()
	eligible := func(p string) string {
		return p + `.available_at <= now() AND NOT EXISTS (SELECT 1 FROM ` + tbl + ` d
                WHERE d.dead_at IS NOT NULL AND d.ordering_key = ` + p + `.ordering_key AND d.seq < ` + p + `.seq)`
	}
	start := ""
	if afterCursor {
		start = ` AND p.ordering_key > $2`
	}
	keyedLimit, unkeyedLimit := `$1`, `$1 - (SELECT count(*) FROM keyed)`
	if !keyedFirst {
		keyedLimit, unkeyedLimit = `$1 - (SELECT count(*) FROM unkeyed)`, `$1`
	}
	cursorParam := ""
	if !afterCursor {
		// Keep the parameter list the same for every variant.
		cursorParam = ` AND $2::text IS NULL`
	}
	s := `WITH RECURSIVE walk (key, seq, ok, found, visited) AS (
    (SELECT p.ordering_key, p.seq, ` + eligible("p") + `, (` + eligible("p") + `)::int, 1
     FROM ` + tbl + ` p
     WHERE p.ordering_key IS NOT NULL AND p.dead_at IS NULL` + start + cursorParam + `
     ORDER BY p.ordering_key, p.seq LIMIT 1)
  UNION ALL
    SELECT h.ordering_key, h.seq, h.ok, w.found + h.ok::int, w.visited + 1
    FROM walk w CROSS JOIN LATERAL (
        SELECT p.ordering_key, p.seq, ` + eligible("p") + ` AS ok
        FROM ` + tbl + ` p
        WHERE p.ordering_key IS NOT NULL AND p.dead_at IS NULL AND p.ordering_key > w.key
        ORDER BY p.ordering_key, p.seq LIMIT 1) h
    WHERE w.found < ` + keyedLimit + ` AND w.visited < $3
),
keyed AS MATERIALIZED (
    SELECT ` + claimColumns + `
    FROM ` + tbl + ` o
    WHERE (o.ordering_key, o.seq) IN (SELECT key, seq FROM walk WHERE ok)
      AND o.dead_at IS NULL AND o.available_at <= now()
    ORDER BY o.seq
    LIMIT ` + keyedLimit + `
    FOR UPDATE OF o SKIP LOCKED
),
unkeyed AS MATERIALIZED (
    SELECT ` + claimColumns + `
    FROM ` + tbl + ` o
    WHERE o.ordering_key IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
    ORDER BY o.available_at, o.seq
    LIMIT ` + unkeyedLimit + `
    FOR UPDATE OF o SKIP LOCKED
)
SELECT false, k.*, NULL::float8, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text FROM keyed k
UNION ALL
SELECT false, u.*, NULL, NULL, NULL, NULL, NULL, NULL FROM unkeyed u
UNION ALL
SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    (SELECT extract(epoch FROM min(available_at) - now())::float8 FROM ` + tbl + `
        WHERE dead_at IS NULL AND available_at > now()),
    (SELECT last_value FROM ` + t.Ident("_wakeup") + `),
    (SELECT count(*) FROM walk),
    (SELECT coalesce(max(found), 0) FROM walk),
    (SELECT key FROM walk ORDER BY visited DESC LIMIT 1),
    -- The batch's transaction commits without waiting for its WAL flush (asyncCommit).
    set_config('synchronous_commit', 'off', true)`
	return s
}

// hot returns the queries worth preparing: every claim variant and the delete.
func (q *queries) hot() []string {
	return []string{q.claimSQL[0][0], q.claimSQL[0][1], q.claimSQL[1][0], q.claimSQL[1][1], q.remove}
}

// claimed is the outcome of one claim statement.
type claimed struct {
	rows    []row
	unkeyed int
	due     time.Duration // until the next row that is not yet due; 0: none
	flag    int64         // the wake-up flag as the database had it
	visited int           // keys the walk visited
	found   int           // eligible heads the walk found
	last    sql.NullString
}

// claim runs the claim statement in tx.
func (q *queries) claim(ctx context.Context, st *statements, tx *sql.Tx, batch int, keyedFirst bool, cursor *string, maxVisits int) (claimed, error) {
	var c claimed
	var cur any
	variant := q.claimSQL[b2i(keyedFirst)][0]
	if cursor != nil {
		cur = *cursor
		variant = q.claimSQL[b2i(keyedFirst)][1]
	}
	rs, err := st.query(ctx, tx, variant, batch, cur, maxVisits)
	if err != nil {
		return c, fmt.Errorf("claim from %s: %w", q.tableName, err)
	}
	defer func() { _ = rs.Close() }()
	for rs.Next() {
		var (
			meta                  bool
			id, exchange, rk, ct  sql.NullString
			mtype, key, hdr, last sql.NullString
			payload               []byte
			created               sql.NullTime
			attempts, seq         sql.NullInt64
			due                   sql.NullFloat64
			flag, visited, found  sql.NullInt64
			setting               sql.NullString
		)
		if err := rs.Scan(&meta, &id, &exchange, &rk, &payload, &mtype, &ct, &hdr, &key, &created, &attempts, &seq,
			&due, &flag, &visited, &found, &last, &setting); err != nil {
			return c, fmt.Errorf("read claimed rows of %s: %w", q.tableName, err)
		}
		if meta {
			if due.Valid && due.Float64 > 0 {
				c.due = time.Duration(due.Float64 * float64(time.Second))
			}
			c.flag = flag.Int64
			c.visited = int(visited.Int64)
			c.found = int(found.Int64)
			c.last = last
			continue
		}
		rw := row{
			id: id.String, exchange: exchange.String, routingKey: rk.String, payload: payload,
			messageType: mtype.String, contentType: ct.String, headers: []byte(hdr.String),
			orderingKey: key.String, keyed: key.Valid, createdAt: created.Time, attempts: int(attempts.Int64),
			seq: seq.Int64,
		}
		if rw.payload == nil {
			rw.payload = []byte{}
		}
		if !rw.keyed {
			c.unkeyed++
		}
		c.rows = append(c.rows, rw)
	}
	if err := rs.Err(); err != nil {
		return c, fmt.Errorf("read claimed rows of %s: %w", q.tableName, err)
	}
	return c, nil
}

// failure is a row whose publish attempt failed.
type failure struct {
	id        string
	err       string
	delay     time.Duration
	permanent bool // the row can never be published: dead at once
}

// failedRow is what the database says about a row after a failed attempt.
type failedRow struct {
	id       string
	attempts int
	dead     bool
}

// settle deletes the confirmed rows and records the failed attempts, in tx. It returns
// the delivery latencies of the removed rows and the state of the failed ones.
func (q *queries) settle(ctx context.Context, st *statements, tx *sql.Tx, confirmed []string, failed []failure, maxAttempts int) ([]float64, []failedRow, error) {
	var latencies []float64
	if len(confirmed) > 0 {
		rs, err := st.query(ctx, tx, q.remove, pq.Array(confirmed))
		if err == nil {
			latencies, err = scanAll(rs, func(l *float64) []any { return []any{l} })
		}
		if err != nil {
			return nil, nil, fmt.Errorf("delete published rows from %s: %w", q.tableName, err)
		}
	}
	var out []failedRow
	if len(failed) > 0 {
		ids := make([]string, len(failed))
		errs := make([]string, len(failed))
		delays := make([]float64, len(failed))
		permanent := make([]bool, len(failed))
		for i, f := range failed {
			ids[i], errs[i], delays[i], permanent[i] = f.id, truncate(f.err, 2000), f.delay.Seconds(), f.permanent
		}
		rs, err := tx.QueryContext(ctx, q.fail, pq.Array(ids), pq.Array(errs), pq.Array(delays), maxAttempts, pq.Array(permanent))
		if err == nil {
			out, err = scanAll(rs, func(f *failedRow) []any { return []any{&f.id, &f.attempts, &f.dead} })
		}
		if err != nil {
			return nil, nil, fmt.Errorf("record failed attempts in %s: %w", q.tableName, err)
		}
	}
	return latencies, out, nil
}

// scanAll reads every row of rs into a T, through the scan destinations that dest
// returns for it (every row overwrites them all), and closes rs.
func scanAll[T any](rs *sql.Rows, dest func(*T) []any) ([]T, error) {
	var out []T
	var v T
	d := dest(&v)
	for rs.Next() {
		if err := rs.Scan(d...); err != nil {
			_ = rs.Close()
			return nil, err
		}
		out = append(out, v)
	}
	if err := rs.Close(); err != nil {
		return nil, err
	}
	return out, rs.Err()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// truncate shortens s to at most n bytes (plus an ellipsis) and makes it storable as
// text: valid UTF-8 without NUL bytes.
func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) <= n {
		return strings.ToValidUTF8(s, "")
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
