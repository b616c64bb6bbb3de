package outboxdb

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Peek is what a relay between claims learns from one cheap statement: whether a claim
// could find a row now, when the next row falls due, and the wake-up flag.
type Peek struct {
	// Due: a live row is due now (it may still be locked by a batch in flight, or
	// blocked behind a dead row of its key; only a claim tells).
	Due bool
	// Next is the time until the earliest live row falls due; 0 when Due or when the
	// table has no live row.
	Next time.Duration
	Flag int64 // the wake-up flag as the database has it
}

// peekSQL returns the relay's peek for the table: one index probe on
// outbox_available_idx and the flag, no parameters, so that it runs as one
// simple-protocol round trip in an implicit read-only transaction (no transaction ID,
// pooler-safe). Its cost is a few units: it is never JIT-compiled.
func (q *Queries) peekSQL() string {
	return `SELECT extract(epoch FROM (SELECT min(available_at) FROM ` + q.table.String() + ` WHERE dead_at IS NULL AND published_at IS NULL) - now())::float8,
    (SELECT last_value FROM ` + q.table.Ident("_wakeup") + `)`
}

// Peek runs the relay's peek.
func (q *Queries) Peek(ctx context.Context, db *sql.DB) (Peek, error) {
	var until sql.NullFloat64
	var p Peek
	if err := db.QueryRowContext(ctx, q.peekSQL()).Scan(&until, &p.Flag); err != nil {
		return Peek{}, fmt.Errorf("peek at %s: %w", q.table, err)
	}
	switch {
	case !until.Valid: // no live row
	case until.Float64 <= 0:
		p.Due = true
	default:
		p.Next = time.Duration(until.Float64 * float64(time.Second))
	}
	return p, nil
}
