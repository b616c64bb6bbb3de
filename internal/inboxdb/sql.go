package inboxdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
)

// InsertSQL stores a batch given as parallel arrays, in array order (seq follows arrival),
// skipping ids already stored, and returns how many rows were new. The payloads travel as
// one bytea with each row's offset (1-based) and length: decoding one value is much
// cheaper for the server than parsing a bytea[] literal.
func InsertSQL(table string) string {
	return `WITH ins AS (
	INSERT INTO ` + table + ` (consumer, message_id, exchange, routing_key, message_type, content_type, headers, payload, ordering_key)
	SELECT $1, u.id, u.ex, u.rk, nullif(u.ty, ''), nullif(u.ct, ''), u.h::jsonb, substr($8::bytea, u.off, u.len), nullif(u.k, '')
	FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $9::int[], $10::int[], $11::text[])
		WITH ORDINALITY AS u(id, ex, rk, ty, ct, h, off, len, k, n)
	ORDER BY u.n
	ON CONFLICT (consumer, message_id) DO NOTHING
	RETURNING 1)
SELECT count(*) FROM ins`
}

// LargePayloads is the size above which the payloads of a batch (one large message,
// normally) go to the database in chunks, with InsertLarge: lib/pq builds a whole
// protocol message in memory, in a buffer grown by appending, so that sending a
// 128 MiB payload in one statement takes about three times its size at once.
const LargePayloads = pg.Chunk

// InsertLargeSQL is InsertSQL with the payloads read from a large object, $8 its oid.
func InsertLargeSQL(table string) string {
	return strings.Replace(InsertSQL(table), `substr($8::bytea, u.off, u.len)`, `lo_get($8::oid, u.off - 1, u.len)`, 1)
}

// Batch is a batch of deliveries for InsertSQL, as parallel arrays: element i of each
// is row i. An empty type, content type or ordering key is stored as NULL.
type Batch struct {
	IDs, Exchanges, RoutingKeys, Types, ContentTypes, Headers, OrderingKeys pq.StringArray
	// Payloads is the payloads of all rows end to end; row i's is Lengths[i] bytes
	// from Offsets[i] (1-based).
	Payloads         []byte
	Offsets, Lengths pq.Int32Array
}

// Insert runs insert (InsertSQL for the table) for b as consumer's rows, outside any
// transaction, and returns how many rows were new. A prepared statement that a pooler
// lost is retried once as a plain query: nothing was stored.
func Insert(ctx context.Context, st *pg.Statements, insert, consumer string, b Batch) (int, error) {
	if !st.Ready(insert) {
		st.Prepare(ctx, insert)
	}
	args := []any{consumer, b.IDs, b.Exchanges, b.RoutingKeys, b.Types, b.ContentTypes,
		b.Headers, b.Payloads, b.Offsets, b.Lengths, b.OrderingKeys}
	rs, err := st.Query(ctx, nil, insert, args...)
	if errors.Is(err, pg.ErrPreparedLost) {
		// Nothing was stored (one statement, its own transaction); the statements
		// use plain queries now.
		rs, err = st.Query(ctx, nil, insert, args...)
	}
	if err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	defer func() { _ = rs.Close() }()
	var n int
	if !rs.Next() {
		err = rs.Err()
		if err == nil {
			err = sql.ErrNoRows
		}
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	if err := rs.Scan(&n); err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	if err := rs.Close(); err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	return n, nil
}

// InsertLarge runs insertLarge (InsertLargeSQL for the table) for b as consumer's rows
// and returns how many rows were new. In one transaction it first writes b.Payloads to
// a new large object, pg.Chunk bytes per round trip, and removes the object after the
// insert: the client never holds more than a chunk beyond b itself.
func InsertLarge(ctx context.Context, db *sql.DB, insertLarge, consumer string, b Batch) (n int, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	p := b.Payloads
	first := min(len(p), pg.Chunk)
	var oid int64
	if err := tx.QueryRowContext(ctx, `SELECT lo_from_bytea(0, $1)`, p[:first]).Scan(&oid); err != nil {
		return 0, fmt.Errorf("insert inbox rows: write payloads: %w", err)
	}
	for off := first; off < len(p); {
		end := min(len(p), off+pg.Chunk)
		if _, err := tx.ExecContext(ctx, `SELECT lo_put($1, $2, $3)`, oid, off, p[off:end]); err != nil {
			return 0, fmt.Errorf("insert inbox rows: write payloads: %w", err)
		}
		pg.Collect(end, end-off)
		off = end
	}
	if err := tx.QueryRowContext(ctx, insertLarge, consumer, b.IDs, b.Exchanges, b.RoutingKeys, b.Types, b.ContentTypes,
		b.Headers, oid, b.Offsets, b.Lengths, b.OrderingKeys).Scan(&n); err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT lo_unlink($1)`, oid); err != nil {
		return 0, fmt.Errorf("insert inbox rows: remove payloads: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("insert inbox rows: %w", err)
	}
	return n, nil
}

// ClaimValues completes a claim's INSERT INTO <table>: the message id recorded as
// processed for the consumer, nothing when it is there already.
const ClaimValues = ` (consumer, message_id, processed_at)
VALUES ($1, $2, now()) ON CONFLICT (consumer, message_id) DO NOTHING`

// ClaimSQL is the claim statement for table.
func ClaimSQL(table string) string { return `INSERT INTO ` + table + ClaimValues }

// Processor is the SQL of a processor of one table.
type Processor struct {
	ordered   bool
	unordered string
	claim     [2][2]string // ordered: [keyedFirst][afterCursor]
	claims    []string     // the claim statements it runs
	begin     string       // ClaimSettings
	restore   string       // HandlerSettings
	done      string
	fail      string
}

// NewProcessor builds a processor's SQL for table. Ordered: the rows of an ordering key
// are claimed from the head of the key, in seq order (orderedClaimSQL).
func NewProcessor(table string, ordered bool) Processor {
	t := table
	p := Processor{
		ordered:   ordered,
		unordered: unorderedClaimSQL(t),
		done: `UPDATE ` + t + ` SET processed_at = now(), last_error = NULL
WHERE consumer = $1 AND message_id = ANY($2::text[])`,
		fail: `UPDATE ` + t + ` SET attempts = attempts + 1, last_error = $3,
  available_at = now() + $4 * interval '1 microsecond',
  dead_at = CASE WHEN attempts + 1 >= $5 THEN now() END
WHERE consumer = $1 AND message_id = $2
RETURNING dead_at IS NOT NULL`,
	}
	for kf := range 2 {
		for ac := range 2 {
			p.claim[kf][ac] = orderedClaimSQL(t, kf == 1, ac == 1)
		}
	}
	p.claims = []string{p.unordered}
	if ordered {
		p.claims = []string{p.claim[0][0], p.claim[0][1], p.claim[1][0], p.claim[1][1]}
	}
	p.begin, p.restore = claimSettings(), handlerSettings()
	return p
}

// Row is one claimed inbox row. Absent optional columns are "".
type Row struct {
	MessageID   string
	Exchange    string
	RoutingKey  string
	MessageType string
	ContentType string
	Headers     []byte // jsonb text
	Payload     []byte
	OrderingKey string
	Keyed       bool // ordering_key is not NULL
	ReceivedAt  time.Time
	Attempts    int
	Seq         int64
}

// MarkProcessed marks consumer's rows ids processed, in tx.
func (p Processor) MarkProcessed(ctx context.Context, tx *sql.Tx, consumer string, ids []string) error {
	if _, err := tx.ExecContext(ctx, p.done, consumer, pq.StringArray(ids)); err != nil {
		return fmt.Errorf("mark inbox rows processed: %w", err)
	}
	return nil
}

// MarkFailed records a failed attempt of consumer's row id, in tx: the error text, the
// next attempt after delay, dead once it has had maxAttempts. It reports whether the row
// is dead now.
func (p Processor) MarkFailed(ctx context.Context, tx *sql.Tx, consumer, id, errText string, delay time.Duration, maxAttempts int) (dead bool, err error) {
	if err := tx.QueryRowContext(ctx, p.fail, consumer, id, errText, delay.Microseconds(), maxAttempts).Scan(&dead); err != nil {
		return false, fmt.Errorf("record failed attempt of inbox message %q: %w", id, err)
	}
	return dead, nil
}

// PurgeSQL deletes up to batch processed rows of table older than retention.
//
// SKIP LOCKED: a row some transaction is touching is left for the next round. One round
// trip in one implicit transaction, without JIT: the statement's estimate grows with the
// table. The values are numbers, safe as literals.
func PurgeSQL(table string, retention time.Duration, batch int) string {
	t := table
	return `SET LOCAL jit = off; DELETE FROM ` + t + ` WHERE (consumer, message_id) IN (
  SELECT consumer, message_id FROM ` + t + `
  WHERE processed_at < now() - ` + strconv.FormatFloat(retention.Seconds(), 'f', -1, 64) + ` * interval '1 second'
  LIMIT ` + strconv.Itoa(batch) + `
  FOR UPDATE SKIP LOCKED)`
}
