// Package outboxdb holds the SQL of the outbox table, in one place: the writers' insert,
// the relay's claim and settlement, the wake-up flag, the state counts behind `sidebox
// status` and the backlog gauges, the check that guards `migrate down`, the loading
// of the table's migrations, and the partitions of the table partitioned by day.
package outboxdb

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
)

// Queries holds the outbox SQL written for one table.
type Queries struct {
	table    pg.Table
	claimSQL [2][2][2]string // [keyedFirst][afterCursor][unkeyedAfter]
	// remove settles confirmed rows of the table itself named by ctid (ONLY: a ctid
	// names a row within one table); removeByID by id, in the table, its partitions
	// and children.
	remove, removeByID string
	fail               string
	payload            string
	flag               [2]string // lower, raise the wake-up flag
}

// asyncCommit makes the current transaction commit without waiting for its WAL flush.
// The relay's own writes only remove published rows, count attempts and move the
// wake-up flag: should the database crash before the flush, rows come back and are
// published again (a duplicate, never a loss), and the flag is set again.
const asyncCommit = `SET LOCAL synchronous_commit TO off`

// ClaimSettings is run right after BEGIN in every batch's transaction, in one round
// trip, before the claim is planned; they hold for every statement of the batch (the
// claim, the payload reads, Settle). They are transaction settings rather than
// connection parameters so that they also hold behind a pooler in transaction mode,
// which refuses most start-up parameters:
//   - no JIT: the claim runs in milliseconds, and compiling it would cost hundreds
//     of milliseconds whenever the planner's estimate passes jit_above_cost;
//   - generic plans: left to choose, PostgreSQL plans the prepared claim anew at
//     every execution on any table it holds statistics for (the generic plan's
//     estimate stays above the custom plan's), about 4 ms per claim, as much as
//     running it;
//   - no sequential scans: every statement of the batch's transaction has an index
//     (or a ctid) to find its rows by, and a generic plan made while the table was
//     nearly empty, which is kept as a backlog grows until the next ANALYZE, would
//     otherwise read the whole table for each claim;
//   - no sort where an index gives the order: with few waiting rows estimated (a
//     generic plan's guess, or many published rows kept for audit) the planner
//     would read the unkeyed part from outbox_available_idx, which holds the keyed
//     rows too, and sort them all on (available_at, seq), incrementally or not,
//     instead of reading outbox_unkeyed_idx in claim order and stopping at the
//     batch. The sorts that remain are of the batch's own rows;
//   - asynchronous commit (asyncCommit);
//   - a batch's transaction that stays idle longer than idle is ended by the server,
//     so that a relay that hangs or loses its process does not keep the batch's rows
//     locked.
func ClaimSettings(idle time.Duration) string {
	return fmt.Sprintf("SET LOCAL jit = off; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; SET LOCAL enable_incremental_sort = off; %s; SET LOCAL idle_in_transaction_session_timeout = %d",
		asyncCommit, idle.Milliseconds())
}

// InlinePayload is the largest payload a claim returns with its row. A larger one is
// left in the table (the claim returns NULL and its size) and read with Payload, in
// chunks of PayloadChunk bytes: the driver holds a whole result value in memory, in
// hex when it comes as text, so a row near the broker's largest message (128 MiB)
// would otherwise need several times its size at once.
const InlinePayload = 4 << 20

// PayloadChunk is the most bytes of a payload Payload reads per round trip.
const PayloadChunk = pg.Chunk

// claimColumns returns the columns of a claimed row of table t, in scan order. tid is
// the row's ctid when the row is in t itself, NULL when it is in a partition or a
// child table of t (Settle).
func claimColumns(t pg.Table) string {
	return `o.id::text AS id, o.exchange, o.routing_key,
        CASE WHEN octet_length(o.payload) <= ` + strconv.Itoa(InlinePayload) + ` THEN o.payload END AS payload,
        o.message_type, o.content_type, o.headers::text AS headers, o.ordering_key, o.created_at, o.attempts,
        CASE WHEN o.tableoid = '` + t.String() + `'::regclass THEN o.ctid::text END AS tid`
}

// claimNames are the names of the columns of claimColumns and of a part's extra
// columns, in the same order.
const claimNames = `id, exchange, routing_key, payload, message_type, content_type, headers, ordering_key,
        created_at, attempts, tid, claim_bytes, claim_at, claim_seq`

// New builds the SQL for table t, for batches of at most maxBatch rows.
//
// The claim takes one batch in one statement, in two parts:
//   - keyed rows: a loose index scan walks the distinct ordering keys that have live rows
//     (outbox_ordering_idx), a few index probes per key, starting after a cursor so that
//     every key gets its turn. The first live row of a key is its head; it is eligible
//     when it is due and no dead row of the same key precedes it (outbox_dead_idx), and
//     the walk locks it as it finds it (FOR UPDATE SKIP LOCKED), passing over a key
//     whose head another transaction holds. Of a locked head's key the claim takes the
//     run: the key's rows from the head on, in seq order, up to the first one that is
//     not due or follows a dead row (a retrying head goes alone). The walk stops after
//     enough rows or after a bounded number of keys, so a claim costs O(batch) index
//     entries however deep the per-key backlogs are.
//   - unkeyed rows: due rows in order of due time, straight from outbox_unkeyed_idx.
//
// Each part locks with FOR UPDATE SKIP LOCKED while it scans, so concurrent batches
// and relays take disjoint rows. A batch takes a key's rows only with its head, and a
// head that is in flight stays locked and present: one batch holds a key at a time, and
// the key's next run is claimed once that batch has settled. A run row locked by
// another transaction (never by a relay) cuts the run before it.
// The part named first takes up to the batch size and the other fills the rest; the
// relay alternates which goes first so neither starves the other. A last row carries
// bookkeeping: the next due time, the wake-up flag and where the walk stopped.
func New(t pg.Table, maxBatch int) *Queries {
	q := &Queries{
		table: t,
	}
	// One simple-protocol round trip, one implicit transaction: setval takes a
	// transaction ID, and its commit need not wait for a WAL flush. The name is a
	// validated identifier, safe in a literal.
	for v := range 2 {
		q.flag[v] = fmt.Sprintf(`%s; SELECT setval('%s', %d)`, asyncCommit, t.Ident("_wakeup"), v)
	}
	for kf := range 2 {
		for ac := range 2 {
			for ua := range 2 {
				q.claimSQL[kf][ac][ua] = claimSQL(t, maxBatch, kf == 1, ac == 1, ua == 1)
			}
		}
	}
	q.setRemove(`DELETE FROM %s`, ``)
	q.fail = `UPDATE ` + t.String() + ` o SET attempts = o.attempts + 1, last_error = f.err,
    available_at = clock_timestamp() + make_interval(secs => f.delay),
    dead_at = CASE WHEN o.attempts + 1 >= $4 OR f.permanent THEN clock_timestamp() END
FROM unnest($1::uuid[], $2::text[], $3::float8[], $5::bool[]) AS f(id, err, delay, permanent)
WHERE o.id = f.id
RETURNING o.id::text, o.attempts, o.dead_at IS NOT NULL`
	q.payload = `SELECT substring(payload FROM $2 FOR $3) FROM ` + t.String() + ` WHERE id = $1::uuid`
	return q
}

// claimSQL parameters: $1 batch size, $2 walk cursor (when afterCursor), $3 most keys
// the walk visits, $4 the batch's byte budget, $5 and $6 the unkeyed cursor: the
// (available_at, seq) after which the unkeyed part starts (when unkeyedAfter).
//
// The unkeyed cursor keeps a long drain from walking the index entries of the rows it
// deleted: until a vacuum removes them they stay at the head of outbox_unkeyed_idx,
// and a scan from the start reads them all, claim after claim.
//
// No estimate in the plan grows with the table (docs/DESIGN.md, "Cost at any
// backlog"): the walk's probes are LIMIT 1 index scans, and the unkeyed scan's estimate
// stops at maxBatch rows, the largest batch size the relay accepts.
func claimSQL(t pg.Table, maxBatch int, keyedFirst, afterCursor, unkeyedAfter bool) string {
	tbl := t.String()
	eligible := func(p string) string {
		return p + `.available_at <= now() AND NOT EXISTS (SELECT 1 FROM ` + tbl + ` d
                WHERE d.dead_at IS NOT NULL AND d.ordering_key = ` + p + `.ordering_key AND d.seq < ` + p + `.seq)`
	}
	// head selects the first live row of the next key: its key, seq, whether it is
	// eligible, and its payload's size (octet_length reads a TOASTed value's header,
	// not the value).
	// A head is locked as the walk finds it, and its key is passed over when another
	// transaction holds it: its key is in flight (or being settled), and none of its
	// rows may be taken. The lock is what keeps two batches, of this relay or another,
	// from holding rows of one key at once: a batch takes a key's rows only with its
	// head. The lock finds the head again by its ctid and tableoid: a ctid is unique
	// within one partition only.
	head := func(after string) string {
		return `SELECT p.ordering_key, p.seq, CASE WHEN ` + eligible("p") + ` THEN
            (SELECT true FROM ` + tbl + ` l WHERE l.ctid = p.ctid AND l.tableoid = p.tableoid AND l.dead_at IS NULL AND l.published_at IS NULL AND l.available_at <= now()
             FOR UPDATE OF l SKIP LOCKED) IS NOT NULL ELSE false END AS ok, p.attempts
        FROM ` + tbl + ` p
        WHERE p.dead_at IS NULL AND p.published_at IS NULL` + after + `
        ORDER BY p.ordering_key, p.seq LIMIT 1`
	}
	// run selects the run of the key whose eligible head is h, for a walk with room
	// rows and budget bytes left: the key's live rows from the head on, in seq order,
	// for as long as they are due and no dead row of the key comes before them, within
	// room and the budget (the head always goes). A retrying head goes alone: the rest
	// of its key follows once it is confirmed. O(room) index entries per key.
	// The index scan stops at a constant, maxBatch rows, and the run's limit applies
	// above it: a limit that is not a constant would be costed as a tenth of the rows
	// below it, a share of the table.
	run := func(room, budget string) string {
		return `SELECT array_agg(y.seq ORDER BY y.seq) AS seqs, coalesce(sum(y.len), 0)::bigint AS bytes
        FROM (SELECT z.seq, z.len, bool_and(z.due) OVER w AS due, sum(z.len) OVER w AS upto
              FROM (SELECT r.seq, octet_length(r.payload)::bigint AS len, r.available_at <= now() AS due
                    FROM ` + tbl + ` r
                    WHERE r.ordering_key = h.ordering_key AND r.dead_at IS NULL AND r.published_at IS NULL AND r.seq >= h.seq
                      AND r.seq < coalesce((SELECT min(d.seq) FROM ` + tbl + ` d
                          WHERE d.dead_at IS NOT NULL AND d.ordering_key = h.ordering_key AND d.seq > h.seq), ` + strconv.FormatInt(math.MaxInt64, 10) + `)
                    ORDER BY r.seq
                    LIMIT ` + strconv.Itoa(maxBatch) + `) z
              WINDOW w AS (ORDER BY z.seq ROWS UNBOUNDED PRECEDING)
              LIMIT CASE WHEN h.attempts > 0 THEN 1 ELSE ` + room + ` END) y
        WHERE y.due AND (y.seq = h.seq OR y.upto <= ` + budget + `)`
	}
	// Keep the parameter list the same for every variant.
	start := ` AND p.ordering_key IS NOT NULL AND $2::text IS NULL`
	if afterCursor {
		start = ` AND p.ordering_key > $2`
	}
	unkeyedStart := ` AND $5::timestamptz IS NULL AND $6::bigint IS NULL`
	if unkeyedAfter {
		unkeyedStart = ` AND (o.available_at, o.seq) > ($5::timestamptz, $6::bigint)`
	}
	// The part named first may take the whole batch and the whole budget; the other
	// takes what is left of both.
	used := func(part string) string {
		return `(SELECT coalesce(sum(claim_bytes), 0) FROM ` + part + `)`
	}
	rest := func(part string) string {
		return `CASE WHEN ` + used(part) + ` >= $4 THEN 0 ELSE $1 - (SELECT count(*) FROM ` + part + `) END`
	}
	keyedLimit, keyedBudget, unkeyedLimit := `$1`, `$4`, rest("keyed")
	first, second := "keyed", "unkeyed"
	if !keyedFirst {
		keyedLimit, keyedBudget, unkeyedLimit = rest("unkeyed"), `$4 - `+used("unkeyed"), `$1`
		first, second = "unkeyed", "keyed"
	}
	// more: the walk would go on (it has room); a walk whose last step had room ran
	// out of keys.
	more := func(w string) string {
		return w + `.found < ` + keyedLimit + ` AND ` + w + `.visited < $3 AND ` + w + `.bytes < ` + keyedBudget
	}
	// extra are the columns each part adds to claimColumns: the payload's size and the
	// part's order, for the byte budget; claim_seq is also the row's x-outbox-seq.
	extra := func(at string) string {
		return `, octet_length(o.payload)::bigint AS claim_bytes, ` + at + ` AS claim_at, o.seq AS claim_seq`
	}
	// budgeted numbers a part's rows by the bytes claimed before each; a row goes when
	// the batch stays within the budget with it, and the first row always goes,
	// however large. Rows past the budget stay locked until the batch commits: the
	// dispatcher sizes the row limit to the budget, so that they are few.
	budgeted := func(part, before string) string {
		return `SELECT c.*, ` + before + `sum(c.claim_bytes) OVER (ORDER BY c.claim_at, c.claim_seq ROWS UNBOUNDED PRECEDING) - c.claim_bytes AS claim_before
    FROM ` + part + ` c`
	}
	// lock locks and reads the row at the key and seq of r, one index probe per row
	// of r: a lateral subquery, so that no plan can read the index or the table from
	// its start instead, whatever the statistics said when the plan was made (a
	// generic plan made while the table was empty is kept as its backlog grows).
	lock := func(r string) string {
		return `SELECT ` + claimColumns(t) + extra(`NULL::timestamptz`) + `
        FROM ` + tbl + ` o
        WHERE o.ordering_key = ` + r + `.key AND o.seq = ` + r + `.seq
          AND o.dead_at IS NULL AND o.published_at IS NULL AND o.available_at <= now()
        FOR UPDATE OF o SKIP LOCKED`
	}
	s := `WITH RECURSIVE walk (key, seq, ok, found, visited, bytes, seqs) AS (
    (SELECT h.ordering_key, h.seq, h.ok, coalesce(cardinality(r.seqs), 0), 1, coalesce(r.bytes, 0), r.seqs
     FROM (` + head(start) + `) h
     LEFT JOIN LATERAL (` + run(keyedLimit, keyedBudget) + `) r ON h.ok
     WHERE ` + keyedLimit + ` > 0 AND ` + keyedBudget + ` > 0)
  UNION ALL
    SELECT h.ordering_key, h.seq, h.ok, w.found + coalesce(cardinality(r.seqs), 0), w.visited + 1, w.bytes + coalesce(r.bytes, 0), r.seqs
    FROM walk w CROSS JOIN LATERAL (` + head(` AND p.ordering_key > w.key`) + `) h
    LEFT JOIN LATERAL (` + run(keyedLimit+` - w.found`, keyedBudget+` - w.bytes`) + `) r ON h.ok
    WHERE ` + more("w") + `
),
runs AS (
    SELECT w.key, s.seq, s.rn FROM walk w CROSS JOIN LATERAL unnest(w.seqs) WITH ORDINALITY AS s(seq, rn) WHERE w.ok
),
heads AS MATERIALIZED (
    SELECT l.* FROM walk w CROSS JOIN LATERAL (` + lock(`w`) + `) l
    WHERE w.ok
),
tails AS MATERIALIZED (
    SELECT l.* FROM runs c CROSS JOIN LATERAL (` + lock(`c`) + `) l
    WHERE c.rn > 1 AND c.key IN (SELECT ordering_key FROM heads)
),
keyed AS MATERIALIZED (
    SELECT ` + claimNames + ` FROM (
        SELECT k.*, bool_and(k.id IS NOT NULL) OVER (PARTITION BY r.key ORDER BY r.rn) AS claim_prefix
        FROM runs r LEFT JOIN (SELECT * FROM heads UNION ALL SELECT * FROM tails) k
          ON k.ordering_key = r.key AND k.claim_seq = r.seq) x
    WHERE x.claim_prefix
    ORDER BY x.claim_seq
    LIMIT ` + keyedLimit + `
),
unkeyed AS MATERIALIZED (
    SELECT * FROM (
        SELECT ` + claimColumns(t) + extra(`o.available_at`) + `
        FROM ` + tbl + ` o
        WHERE o.ordering_key IS NULL AND o.dead_at IS NULL AND o.published_at IS NULL AND o.available_at <= now()` + unkeyedStart + `
        ORDER BY o.available_at, o.seq
        LIMIT ` + strconv.Itoa(maxBatch) + `
        FOR UPDATE OF o SKIP LOCKED) u
    LIMIT ` + unkeyedLimit + `
),
part1 AS (` + budgeted(first, "") + `),
part2 AS (` + budgeted(second, used(first)+` + `) + `)
SELECT false, f.*, NULL::float8, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, NULL::boolean, NULL::bigint
FROM part1 f WHERE f.claim_before = 0 OR f.claim_before + f.claim_bytes <= $4
UNION ALL
SELECT false, s.*, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM part2 s WHERE s.claim_before = 0 OR s.claim_before + s.claim_bytes <= $4
UNION ALL
SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    (SELECT extract(epoch FROM min(available_at) - now())::float8 FROM ` + tbl + `
        WHERE dead_at IS NULL AND published_at IS NULL AND available_at > now()),
    (SELECT last_value FROM ` + t.Ident("_wakeup") + `),
    (SELECT count(*) FROM walk),
    (SELECT coalesce(max(found), 0) FROM walk),
    (SELECT key FROM walk ORDER BY visited DESC LIMIT 1),
    (SELECT count(*) FROM heads) + (SELECT count(*) FROM tails) + (SELECT count(*) FROM unkeyed),
    coalesce((SELECT ` + more("w") + ` FROM walk w ORDER BY w.visited DESC LIMIT 1), ` + keyedLimit + ` > 0 AND ` + keyedBudget + ` > 0),
    '` + tbl + `'::regclass::oid::bigint`
	return s
}

// Flag returns the statement that sets the wake-up flag to v (0: lowered, 1: raised),
// in one simple-protocol round trip with asynchronous commit.
func (q *Queries) Flag(v int) string { return q.flag[v] }

// Hot returns the queries worth preparing: every claim variant, the settle statements
// and the payload read (prepared, its bytea comes in binary rather than hex).
func (q *Queries) Hot() []string {
	return append(q.Variants(), q.remove, q.removeByID, q.payload)
}

// Variants returns every variant of the claim statement.
func (q *Queries) Variants() []string {
	var out []string
	for _, byCursor := range q.claimSQL {
		for _, variants := range byCursor {
			out = append(out, variants[:]...)
		}
	}
	return out
}

// Warm runs every statement of Hot once in tx, which began with ClaimSettings, on no
// rows: each claim variant with a batch of 0 rows, which locks nothing, and the settle
// and payload statements on none. A prepared statement is planned at its first
// execution on a connection, and a claim variant takes 2 to 10 ms to plan (more on a
// new connection); warmed, a connection's first batches do not wait for that.
func (q *Queries) Warm(ctx context.Context, st *pg.Statements, tx *sql.Tx) error {
	key, from := "", &UnkeyedCursor{At: time.Now()}
	for kf := range 2 {
		for ac := range 2 {
			for ua := range 2 {
				c := Claim{KeyedFirst: kf == 1}
				if ac == 1 {
					c.Cursor = &key
				}
				if ua == 1 {
					c.From = from
				}
				if _, err := q.Claim(ctx, st, tx, c); err != nil {
					return err
				}
			}
		}
	}
	if _, err := q.settleBy(ctx, st, tx, q.remove, pq.Array([]string{}), int64(0)); err != nil {
		return fmt.Errorf("warm the settle statement of %s: %w", q.table, err)
	}
	if _, err := q.settleBy(ctx, st, tx, q.removeByID, pq.Array([]string{})); err != nil {
		return fmt.Errorf("warm the settle statement of %s: %w", q.table, err)
	}
	rs, err := st.Query(ctx, tx, q.payload, nil, 1, 0)
	if err != nil {
		return fmt.Errorf("warm the payload statement of %s: %w", q.table, err)
	}
	return rs.Close()
}

// Row is one claimed outbox row.
type Row struct {
	ID          string // canonical lower-case UUID text, as PostgreSQL prints it
	TID         string // the row version's ctid, as PostgreSQL prints it; "" in a partition or child table (Settle)
	Exchange    string
	RoutingKey  string
	Payload     []byte // nil when Size > InlinePayload: read it with Payload
	Size        int    // payload bytes
	MessageType string
	ContentType string
	Headers     []byte // jsonb text
	OrderingKey string
	Keyed       bool
	Seq         int64
	CreatedAt   time.Time
	Attempts    int
}

// Claimed is the outcome of one claim statement.
type Claimed struct {
	Rows      []Row
	Unkeyed   int           // rows without an ordering key
	Bytes     int           // payload bytes of Rows
	Locked    int           // rows locked; more than len(Rows) when the byte budget cut the batch
	Due       time.Duration // until the next row that is not yet due; 0: none
	Flag      int64         // the wake-up flag as the database had it
	Visited   int           // keys the walk visited
	Found     int           // rows of eligible heads' runs the walk found
	Last      sql.NullString
	WalkEnded bool // the walk reached the last key
	// Rel is the table's oid, for Ref.Rel: with a row's TID it names the row.
	Rel int64
	// UnkeyedLast is the (available_at, seq) of the last unkeyed row claimed; valid
	// when Unkeyed > 0.
	UnkeyedLast UnkeyedCursor
}

// UnkeyedCursor is a position in the order of unkeyed rows.
type UnkeyedCursor struct {
	At  time.Time
	Seq int64
}

// After reports whether c comes after d.
func (c UnkeyedCursor) After(d UnkeyedCursor) bool {
	return c.At.After(d.At) || c.At.Equal(d.At) && c.Seq > d.Seq
}

// Claim is what one claim asks for.
type Claim struct {
	BatchSize  int  // most rows
	BatchBytes int  // byte budget of the payloads
	KeyedFirst bool // the keyed part takes first
	// Cursor is the ordering key after which the walk starts; nil: at the start.
	Cursor *string
	// MaxVisits bounds the keys the walk visits.
	MaxVisits int
	// From is where the unkeyed part starts; nil: at the start.
	From *UnkeyedCursor
}

// Args are the claim statement's parameters.
func (c Claim) Args() []any {
	var cur any
	if c.Cursor != nil {
		cur = *c.Cursor
	}
	args := []any{c.BatchSize, cur, c.MaxVisits, c.BatchBytes, nil, nil}
	if c.From != nil {
		args[4], args[5] = c.From.At, c.From.Seq
	}
	return args
}

// SQL returns the variant of the claim statement for c.
func (q *Queries) SQL(c Claim) string {
	return q.Variant(c.KeyedFirst, c.Cursor != nil, c.From != nil)
}

// Variant returns one variant of the claim statement: the keyed part first or not, the
// walk starting after a cursor or not, the unkeyed part starting after a cursor or not.
func (q *Queries) Variant(keyedFirst, afterCursor, unkeyedAfter bool) string {
	return q.claimSQL[b2i(keyedFirst)][b2i(afterCursor)][b2i(unkeyedAfter)]
}

// Claim runs the claim statement in tx, which began with ClaimSettings.
func (q *Queries) Claim(ctx context.Context, st *pg.Statements, tx *sql.Tx, cl Claim) (Claimed, error) {
	var c Claimed
	rs, err := st.Query(ctx, tx, q.SQL(cl), cl.Args()...)
	if err != nil {
		return c, fmt.Errorf("claim from %s: %w", q.table, err)
	}
	defer func() { _ = rs.Close() }()
	// One set of destinations for every row: Scan sets each of them, NULL included, and
	// what a row keeps is copied out of them (the payload is a new slice per row).
	var (
		meta                  bool
		id, exchange, rk, ct  sql.NullString
		mtype, key, hdr, last sql.NullString
		tid                   sql.NullString
		payload               []byte
		created               sql.NullTime
		attempts              sql.NullInt64
		size, before          sql.NullInt64
		at                    sql.NullTime
		seq                   sql.NullInt64
		due                   sql.NullFloat64
		flag, visited, found  sql.NullInt64
		locked                sql.NullInt64
		ended                 sql.NullBool
		rel                   sql.NullInt64
	)
	dest := []any{&meta, &id, &exchange, &rk, &payload, &mtype, &ct, &hdr, &key, &created, &attempts, &tid,
		&size, &at, &seq, &before,
		&due, &flag, &visited, &found, &last, &locked, &ended, &rel}
	for rs.Next() {
		if err := rs.Scan(dest...); err != nil {
			return c, fmt.Errorf("read claimed rows of %s: %w", q.table, err)
		}
		if meta {
			if due.Valid && due.Float64 > 0 {
				c.Due = time.Duration(due.Float64 * float64(time.Second))
			}
			c.Flag = flag.Int64
			c.Visited = int(visited.Int64)
			c.Found = int(found.Int64)
			c.Last = last
			c.Locked = int(locked.Int64)
			c.WalkEnded = ended.Bool
			c.Rel = rel.Int64
			continue
		}
		rw := Row{
			ID: id.String, TID: tid.String, Exchange: exchange.String, RoutingKey: rk.String, Payload: payload,
			MessageType: mtype.String, ContentType: ct.String, Headers: []byte(hdr.String),
			OrderingKey: key.String, Keyed: key.Valid, CreatedAt: created.Time, Attempts: int(attempts.Int64),
			Seq: seq.Int64, Size: int(size.Int64),
		}
		if rw.Payload == nil && rw.Size <= InlinePayload { // payload is NOT NULL: NULL means left out
			rw.Payload = []byte{}
		}
		if !rw.Keyed {
			c.Unkeyed++
			if u := (UnkeyedCursor{at.Time, seq.Int64}); c.Unkeyed == 1 || u.After(c.UnkeyedLast) {
				c.UnkeyedLast = u
			}
		}
		c.Bytes += int(size.Int64)
		c.Rows = append(c.Rows, rw)
	}
	if err := rs.Err(); err != nil {
		return c, fmt.Errorf("read claimed rows of %s: %w", q.table, err)
	}
	return c, nil
}

// Payload reads the payload of the claimed row id, of size bytes, in tx, in chunks of
// at most PayloadChunk bytes into one slice of that size: the row is locked by the
// claim, so its payload cannot change in between.
func (q *Queries) Payload(ctx context.Context, st *pg.Statements, tx *sql.Tx, id string, size int) ([]byte, error) {
	buf := make([]byte, 0, size)
	for len(buf) < size {
		n := min(PayloadChunk, size-len(buf))
		if err := q.payloadChunk(ctx, st, tx, id, &buf, n); err != nil {
			return nil, fmt.Errorf("read payload of outbox row %s from %s: %w", id, q.table, err)
		}
		pg.Collect(len(buf), n)
	}
	return buf, nil
}

// payloadChunk appends the next n bytes of the payload of row id to buf.
func (q *Queries) payloadChunk(ctx context.Context, st *pg.Statements, tx *sql.Tx, id string, buf *[]byte, n int) error {
	rs, err := st.Query(ctx, tx, q.payload, id, len(*buf)+1, n)
	if err != nil {
		return err
	}
	defer func() { _ = rs.Close() }()
	if !rs.Next() {
		if err := rs.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	var chunk sql.RawBytes // the driver's buffer: copied once, into buf
	if err := rs.Scan(&chunk); err != nil {
		return err
	}
	if len(chunk) != n {
		return fmt.Errorf("read %d bytes at offset %d, want %d", len(chunk), len(*buf), n)
	}
	*buf = append(*buf, chunk...)
	return rs.Close()
}

// Failure is a row whose publish attempt failed.
type Failure struct {
	ID        string
	Err       string
	Delay     time.Duration
	Permanent bool // the row can never be published: dead at once
}

// FailedRow is what the database says about a row after a failed attempt.
type FailedRow struct {
	ID       string
	Attempts int
	Dead     bool
}

// setRemove sets the statements that settle confirmed rows: verb is the DELETE or
// UPDATE with a %s where the table goes, and (when not empty) cond a condition
// the rows must also meet.
func (q *Queries) setRemove(verb, cond string) {
	if cond != "" {
		cond = " AND " + cond
	}
	const latency = `
RETURNING extract(epoch FROM clock_timestamp() - greatest(created_at, available_at))::float8`
	q.remove = fmt.Sprintf(verb, "ONLY "+q.table.String()) + ` WHERE ctid = ANY($1::tid[]) AND tableoid = $2::oid` + cond + latency
	q.removeByID = fmt.Sprintf(verb, q.table.String()) + ` WHERE id = ANY($1::uuid[])` + cond + latency
}

// Remove returns the statement with which Settle removes confirmed rows named by
// ctid ($1, tid[]) in the table whose oid the claim gave ($2, Claimed.Rel).
func (q *Queries) Remove() string { return q.remove }

// Ref names a claimed row for Settle.
type Ref struct {
	ID  string
	TID string // Row.TID; "": found by ID
	Rel int64  // Claimed.Rel, with TID
}

// Settle deletes the confirmed rows and records the failed attempts, in tx. It returns
// the delivery latencies of the removed rows and the state of the failed ones.
//
// The confirmed rows are found by their ctid, a direct heap fetch per row, rather than
// through the primary key: random UUIDs spread a batch over as many index pages as it
// has rows, which a large table no longer holds in shared buffers (measured on
// 1,000,000 rows, 500 rows: by id 3.2 ms with the index cached, 28 to 69 ms without;
// by ctid 0.4 to 0.6 ms). A ctid names the same row for as long as tx holds it locked,
// which it does from the claim on: no other transaction can update or delete it, and
// nothing can move it (VACUUM FULL and CLUSTER wait for tx's lock). A ctid names a row
// within one table only: the claim gives one (Row.TID) only for rows of the table
// itself, with the table's oid (Claimed.Rel), and the statement reads that table alone
// (ONLY) and only while the name still means it (tableoid). Rows of partitions (the
// table partitioned by day) or child tables are found by id, and so are the rows of a
// ctid statement that found fewer rows than it was given.
func (q *Queries) Settle(ctx context.Context, st *pg.Statements, tx *sql.Tx, confirmed []Ref, failed []Failure, maxAttempts int) ([]float64, []FailedRow, error) {
	var latencies []float64
	if len(confirmed) > 0 {
		byRel := map[int64][]Ref{} // rows of the table itself, by the oid their claim saw
		var ids []string           // the others
		for _, c := range confirmed {
			if c.TID != "" {
				byRel[c.Rel] = append(byRel[c.Rel], c)
			} else {
				ids = append(ids, c.ID)
			}
		}
		for rel, refs := range byRel {
			tids := make([]string, len(refs))
			for i, c := range refs {
				tids[i] = c.TID
			}
			l, err := q.settleBy(ctx, st, tx, q.remove, pq.Array(tids), rel)
			if err != nil {
				return nil, nil, fmt.Errorf("delete published rows from %s: %w", q.table, err)
			}
			latencies = append(latencies, l...)
			if len(l) < len(refs) {
				// Not where the claim found them: the name now means another table,
				// or a row changed within the batch. By id, rows the first
				// statement settled are not found again.
				for _, c := range refs {
					ids = append(ids, c.ID)
				}
			}
		}
		if len(ids) > 0 {
			l, err := q.settleBy(ctx, st, tx, q.removeByID, pq.Array(ids))
			if err != nil {
				return nil, nil, fmt.Errorf("delete published rows from %s: %w", q.table, err)
			}
			latencies = append(latencies, l...)
		}
	}
	var out []FailedRow
	if len(failed) > 0 {
		ids := make([]string, len(failed))
		errs := make([]string, len(failed))
		delays := make([]float64, len(failed))
		permanent := make([]bool, len(failed))
		for i, f := range failed {
			ids[i], errs[i], delays[i], permanent[i] = f.ID, pg.ErrorText(f.Err), f.Delay.Seconds(), f.Permanent
		}
		rs, err := tx.QueryContext(ctx, q.fail, pq.Array(ids), pq.Array(errs), pq.Array(delays), maxAttempts, pq.Array(permanent))
		if err == nil {
			out, err = scanAll(rs, func(f *FailedRow) []any { return []any{&f.ID, &f.Attempts, &f.Dead} })
		}
		if err != nil {
			return nil, nil, fmt.Errorf("record failed attempts in %s: %w", q.table, err)
		}
	}
	return latencies, out, nil
}

// settleBy runs remove or removeByID with args and returns the latencies of the rows
// it settled.
func (q *Queries) settleBy(ctx context.Context, st *pg.Statements, tx *sql.Tx, stmt string, args ...any) ([]float64, error) {
	rs, err := st.Query(ctx, tx, stmt, args...)
	if err != nil {
		return nil, err
	}
	return scanAll(rs, func(l *float64) []any { return []any{l} })
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
