package relay

import (
	"context"
	"database/sql"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// queries is the relay's SQL for one table; the statements themselves live in
// internal/outboxdb, with the rest of the outbox table's SQL.
type queries struct {
	*outboxdb.Queries
	tableName string
	flag      [2]string // lower, raise the wake-up flag
}

// newQueries builds the SQL for table t.
func newQueries(t pg.Table) queries {
	q := outboxdb.New(t, MaxBatchSize)
	return queries{Queries: q, tableName: t.String(), flag: [2]string{q.Flag(0), q.Flag(1)}}
}

// claimSettings is run right after BEGIN in every batch's transaction
// (outboxdb.ClaimSettings): a batch's transaction that stays idle longer than the relay
// ever holds one (its confirms, then settling) is ended by the server.
func claimSettings(publishTimeout time.Duration) string {
	return outboxdb.ClaimSettings(publishTimeout + dbTimeout + 20*time.Second) // PublishTimeout + 30s
}

// hot returns the queries worth preparing: every claim variant and the settle statements.
func (q *queries) hot() []string { return q.Hot() }

// claimed is the outcome of one claim statement.
type claimed struct {
	rows      []row
	unkeyed   int
	bytes     int           // payload bytes of rows
	locked    int           // rows locked; more than len(rows) when the byte budget cut the batch
	due       time.Duration // until the next row that is not yet due; 0: none
	flag      int64         // the wake-up flag as the database had it
	visited   int           // keys the walk visited
	found     int           // eligible heads the walk found
	last      sql.NullString
	walkEnded bool  // the walk reached the last key
	rel       int64 // the table's oid, for settling rows by tid (outboxdb.Ref)
	// unkeyedLast is the (available_at, seq) of the last unkeyed row claimed; valid
	// when unkeyed > 0.
	unkeyedLast unkeyedCursor
}

// unkeyedCursor is a position in the order of unkeyed rows.
type unkeyedCursor = outboxdb.UnkeyedCursor

// claim runs the claim statement in tx, which began with claimSettings.
func (q *queries) claim(ctx context.Context, st *pg.Statements, tx *sql.Tx, cfg Config, keyedFirst bool, cursor *string, maxVisits int, from *unkeyedCursor) (claimed, error) {
	c, err := q.Claim(ctx, st, tx, outboxdb.Claim{
		BatchSize: cfg.BatchSize, BatchBytes: cfg.BatchBytes, KeyedFirst: keyedFirst,
		Cursor: cursor, MaxVisits: maxVisits, From: from,
	})
	out := claimed{
		unkeyed: c.Unkeyed, bytes: c.Bytes, locked: c.Locked, due: c.Due, flag: c.Flag,
		visited: c.Visited, found: c.Found, last: c.Last, walkEnded: c.WalkEnded, unkeyedLast: c.UnkeyedLast, rel: c.Rel,
	}
	if len(c.Rows) > 0 {
		out.rows = make([]row, len(c.Rows))
		for i, r := range c.Rows {
			out.rows[i] = row{
				id: r.ID, tid: r.TID, exchange: r.Exchange, routingKey: r.RoutingKey, payload: r.Payload, size: r.Size,
				messageType: r.MessageType, contentType: r.ContentType, headers: r.Headers,
				orderingKey: r.OrderingKey, keyed: r.Keyed, seq: r.Seq, createdAt: r.CreatedAt, attempts: r.Attempts,
			}
		}
		orderRuns(out.rows)
	}
	return out, err
}
