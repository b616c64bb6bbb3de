package inboxdb

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/sidebox/sidebox/internal/pg"
)

// MaxClaim is the most rows a processor claim takes; the inbox's ProcessorConfig bounds
// its batch size by it. Constant bounds inside the claim use it, so that no estimate in
// its plan grows with the table.
const MaxClaim = 64

// claimColumns are the columns of a claimed row, in Row.scan's order, of table alias a.
func claimColumns(a string) string {
	return a + `.message_id, ` + a + `.exchange, ` + a + `.routing_key, coalesce(` + a + `.message_type, '') AS message_type,
    coalesce(` + a + `.content_type, '') AS content_type, ` + a + `.headers, ` + a + `.payload, ` + a + `.ordering_key,
    ` + a + `.received_at, ` + a + `.attempts, ` + a + `.seq`
}

// due is the condition of a row that may be handed to the handler now: stored, not
// processed, not dead, due. A locking scan checks it again on a row that another
// transaction changed since the statement's snapshot.
func due(a string) string {
	return a + `.processed_at IS NULL AND ` + a + `.dead_at IS NULL AND ` + a + `.available_at <= now()`
}

// unorderedClaimSQL: due rows in arrival order, $1 consumer, $2 batch size.
func unorderedClaimSQL(t string) string {
	return `SELECT false, ` + claimColumns("i") + `, NULL::text, NULL::boolean
FROM ` + t + ` i
WHERE i.consumer = $1 AND ` + due("i") + `
ORDER BY i.seq
LIMIT $2
FOR UPDATE SKIP LOCKED`
}

// orderedClaimSQL parameters: $1 consumer, $2 batch size, $3 walk cursor (when
// afterCursor, else NULL), $4 most keys the walk visits.
//
// The claim takes one batch in one statement, in two parts:
//   - keyed rows: a loose index scan walks the distinct ordering keys that have
//     unprocessed rows (inbox_ordering_idx), one LIMIT 1 index probe per key, starting
//     after a cursor so that every key gets its turn. The first unprocessed row of a key
//     is its head, dead and retrying rows included; it is eligible when it is due. The
//     walk stops after enough eligible heads or after $4 keys, so that a claim costs
//     O(batch) probes however deep the keys' backlogs are and however skewed.
//     The eligible heads are locked FOR UPDATE SKIP LOCKED: a head that another
//     processor holds (or processed or failed since the snapshot: the lock re-checks the
//     row) is skipped, and with it its whole key. For each head it holds, the claim then
//     takes the key's next rows in seq order, as long as they are due, up to an equal
//     share of the batch: one hot key fills a batch on its own. Those rows are locked too,
//     and a row is kept only when every row of its key before it is kept: the rows of a
//     key in a batch are consecutive, from its head.
//   - unkeyed rows: due rows in order of due time, from inbox_unkeyed_idx.
//
// Holding a key's head is what lets a processor take its other rows, and the head stays
// locked until the batch ends: no two processors hold rows of one key at once. The part
// named first may take the whole batch; the other takes what is left, and the processor
// alternates which goes first. A last row carries the key where the walk stopped and
// whether it ran out of keys.
//
// No estimate in the plan grows with the table (docs/DESIGN.md, "Cost at any backlog"):
// the walk's probes are LIMIT 1 index scans, and the scans of a key's run and of the
// unkeyed rows stop at MaxClaim rows, with the real limit applied above them.
func orderedClaimSQL(t string, keyedFirst, afterCursor bool) string {
	most := strconv.Itoa(MaxClaim)
	// head selects the first unprocessed row of the next key: its key, seq and whether
	// it is eligible.
	head := func(after string) string {
		return `SELECT p.ordering_key, p.seq, p.dead_at IS NULL AND p.available_at <= now() AS ok
        FROM ` + t + ` p
        WHERE p.consumer = $1 AND p.processed_at IS NULL` + after + `
        ORDER BY p.ordering_key, p.seq LIMIT 1`
	}
	// Keep the parameter list the same for every variant.
	start := ` AND p.ordering_key IS NOT NULL AND $3::text IS NULL`
	if afterCursor {
		start = ` AND p.ordering_key > $3`
	}
	keyedLimit := `$2`
	unkeyedLimit := `$2 - (SELECT count(*) FROM keyed)`
	if !keyedFirst {
		keyedLimit, unkeyedLimit = `$2 - (SELECT count(*) FROM unkeyed)`, `$2`
	}
	// lock locks and reads the row at the key and seq of r, one index probe per row of
	// r: a lateral subquery, so that no plan can read the index from its start instead,
	// whatever the statistics said when the plan was made (a generic plan made while the
	// table was empty is kept as its backlog grows).
	lock := func(r string) string {
		return `SELECT ` + claimColumns("i") + `
        FROM ` + t + ` i
        WHERE i.consumer = $1 AND i.ordering_key = ` + r + `.key AND i.seq = ` + r + `.seq AND ` + due("i") + `
        FOR UPDATE OF i SKIP LOCKED`
	}
	// more: the walk would go on (it has room); a walk whose last step had room ran out
	// of keys.
	more := func(w string) string {
		return w + `.found < ` + keyedLimit + ` AND ` + w + `.visited < $4`
	}
	return `WITH RECURSIVE walk (key, seq, ok, found, visited) AS (
    (SELECT h.ordering_key, h.seq, h.ok, h.ok::int, 1
     FROM (` + head(start) + `) h
     WHERE ` + keyedLimit + ` > 0)
  UNION ALL
    SELECT h.ordering_key, h.seq, h.ok, w.found + h.ok::int, w.visited + 1
    FROM walk w CROSS JOIN LATERAL (` + head(` AND p.ordering_key > w.key`) + `) h
    WHERE ` + more("w") + `
),
heads AS MATERIALIZED (
    SELECT l.* FROM walk w CROSS JOIN LATERAL (` + lock("w") + `) l
    WHERE w.ok
),
-- The rows after each head held, in seq order, as long as they are due: each key's
-- equal share of the batch, its head included.
next AS MATERIALIZED (
    SELECT n.key, n.seq, n.place FROM (
        SELECT h.ordering_key AS key, r.seq, row_number() OVER k AS place, bool_and(r.ok) OVER k AS ok
        FROM heads h CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT r.seq, r.dead_at IS NULL AND r.available_at <= now() AS ok
                FROM ` + t + ` r
                WHERE r.consumer = $1 AND r.ordering_key = h.ordering_key AND r.seq > h.seq AND r.processed_at IS NULL
                ORDER BY r.seq
                LIMIT ` + most + `) r
            LIMIT (SELECT (` + keyedLimit + `) / nullif(count(*), 0) - 1 FROM heads)) r
        WINDOW k AS (PARTITION BY h.ordering_key ORDER BY r.seq)) n
    WHERE n.ok
),
run AS MATERIALIZED (
    SELECT l.* FROM next n CROSS JOIN LATERAL (` + lock("n") + `) l
),
-- A row of a run is kept when the rows of its key before it were all locked.
kept AS MATERIALIZED (
    SELECT n.seq FROM (
        SELECT n.seq, n.place, count(r.seq) OVER (PARTITION BY n.key ORDER BY n.seq) AS held
        FROM next n LEFT JOIN run r ON r.seq = n.seq) n
    WHERE n.held = n.place
),
keyed AS MATERIALIZED (
    SELECT * FROM heads
  UNION ALL
    SELECT * FROM run WHERE seq IN (SELECT seq FROM kept)
),
unkeyed AS MATERIALIZED (
    SELECT * FROM (
        SELECT ` + claimColumns("i") + `
        FROM ` + t + ` i
        WHERE i.consumer = $1 AND i.ordering_key IS NULL AND ` + due("i") + `
        ORDER BY i.available_at, i.seq
        LIMIT ` + most + `
        FOR UPDATE OF i SKIP LOCKED) u
    LIMIT ` + unkeyedLimit + `
)
SELECT * FROM (
    SELECT false, k.*, NULL::text, NULL::boolean FROM keyed k
  UNION ALL
    SELECT false, u.*, NULL, NULL FROM unkeyed u
    ORDER BY seq) c
UNION ALL
SELECT true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    (SELECT key FROM walk ORDER BY visited DESC LIMIT 1),
    coalesce((SELECT ` + more("w") + ` FROM walk w ORDER BY w.visited DESC LIMIT 1), ` + keyedLimit + ` > 0)`
}

// Claim is what one processor claim asks for.
type Claim struct {
	Limit      int  // most rows, at most MaxClaim
	KeyedFirst bool // ordered: keyed rows take first, unkeyed rows the rest
	// Cursor is the ordering key after which the walk starts; nil: at the start.
	Cursor *string
	// MaxVisits bounds the keys the walk visits.
	MaxVisits int
}

// Claimed is the outcome of one processor claim.
type Claimed struct {
	Rows []Row // in seq order
	// Last is the key where the walk stopped; not valid when it visited none.
	Last sql.NullString
	// WalkEnded: the walk reached the last key.
	WalkEnded bool
}

// planSetting is a planner setting of the claim: its name, the claim's value, and the
// placeholder that keeps the transaction's own value meanwhile.
type planSetting struct{ name, value, saved string }

// planSettings are what the claim is planned and run with (see ClaimSettings).
var planSettings = [...]planSetting{
	{"plan_cache_mode", "force_generic_plan", "sidebox.saved_plan_cache_mode"},
	{"enable_seqscan", "off", "sidebox.saved_enable_seqscan"},
	{"enable_sort", "off", "sidebox.saved_enable_sort"},
	{"enable_incremental_sort", "off", "sidebox.saved_enable_incremental_sort"},
}

// ClaimSettings is run right after BEGIN in a processor's batch, in one round trip,
// before the claim is planned. The claim is a prepared statement where that is safe
// (pg.Statements), planned once per connection rather than at every claim, which cost
// as much as running it:
//   - no JIT, for the whole batch: the claim runs in milliseconds, and compiling it
//     would cost hundreds whenever the planner's estimate passes jit_above_cost;
//   - for the claim only: a generic plan (left to choose, PostgreSQL keeps planning
//     the claim anew at every execution), with no sequential scan and no sort where an
//     index gives the order, so that a plan made while the table was nearly empty still
//     reads O(batch) rows of a large backlog. The values the transaction had before
//     are kept in placeholders, and HandlerSettings puts them back before the handler
//     runs, so that the handler's statements are planned as the application set them.
func (p Processor) ClaimSettings() string { return p.begin }

func claimSettings() string {
	s := "SET LOCAL jit = off; " + copySettings(func(p planSetting) (string, string) { return p.name, p.saved })
	for _, p := range planSettings {
		s += "; SET LOCAL " + p.name + " = " + p.value
	}
	return s
}

// HandlerSettings puts back the planner settings that ClaimSettings changed for the
// claim, in the same transaction.
func (p Processor) HandlerSettings() string { return p.restore }

func handlerSettings() string {
	return copySettings(func(p planSetting) (string, string) { return p.saved, p.name })
}

// copySettings is one SELECT that sets, for the rest of the transaction, the setting
// to of every planSetting to the value of its setting from.
func copySettings(fromTo func(planSetting) (from, to string)) string {
	parts := make([]string, len(planSettings))
	for i, p := range planSettings {
		from, to := fromTo(p)
		parts[i] = "set_config('" + to + "', current_setting('" + from + "'), true)"
	}
	return "SELECT " + strings.Join(parts, ", ")
}

// Claims are the claim statements p runs, for preparing them.
func (p Processor) Claims() []string { return p.claims }

// Claim locks and returns up to c.Limit due rows of consumer in tx, in seq order,
// skipping rows other transactions hold; ordered, the rows of a key are consecutive
// from its head (see orderedClaimSQL). tx began with ClaimSettings. The claim runs as a
// prepared statement when st prepared it; an error wrapping pg.ErrPreparedLost means
// that the connection had lost it, and tx is unusable.
func (p Processor) Claim(ctx context.Context, st *pg.Statements, tx *sql.Tx, consumer string, c Claim) (Claimed, error) {
	var out Claimed
	q := p.ClaimSQL(c)
	rows, err := st.Query(ctx, tx, q, p.ClaimArgs(consumer, c)...)
	if err != nil {
		return out, fmt.Errorf("claim inbox rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			meta                          bool
			id, ex, rk, mt, ct, key, last sql.NullString
			headers, payload              []byte
			received                      sql.NullTime
			attempts, seq                 sql.NullInt64
			ended                         sql.NullBool
		)
		if err := rows.Scan(&meta, &id, &ex, &rk, &mt, &ct, &headers, &payload, &key, &received, &attempts, &seq, &last, &ended); err != nil {
			return out, fmt.Errorf("read inbox row: %w", err)
		}
		if meta {
			out.Last, out.WalkEnded = last, ended.Bool
			continue
		}
		if payload == nil {
			payload = []byte{} // NOT NULL
		}
		out.Rows = append(out.Rows, Row{
			MessageID: id.String, Exchange: ex.String, RoutingKey: rk.String, MessageType: mt.String, ContentType: ct.String,
			Headers: headers, Payload: payload, OrderingKey: key.String, Keyed: key.Valid, ReceivedAt: received.Time,
			Attempts: int(attempts.Int64), Seq: seq.Int64,
		})
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("claim inbox rows: %w", err)
	}
	return out, nil
}

// ClaimSQL returns the processor's claim statement for c, for checking its plan; its
// parameters are ClaimArgs.
func (p Processor) ClaimSQL(c Claim) string {
	if !p.ordered {
		return p.unordered
	}
	return p.claim[b2i(c.KeyedFirst)][b2i(c.Cursor != nil)]
}

// ClaimArgs are the parameters of ClaimSQL(c) for consumer.
func (p Processor) ClaimArgs(consumer string, c Claim) []any {
	if !p.ordered {
		return []any{consumer, c.Limit}
	}
	var cur any
	if c.Cursor != nil {
		cur = *c.Cursor
	}
	return []any{consumer, c.Limit, cur, c.MaxVisits}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
