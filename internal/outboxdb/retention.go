package outboxdb

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
)

// KeepPublished makes Settle mark confirmed rows published (published_at, database
// clock) instead of deleting them: audit retention. The claim and every state count
// leave published rows out, through partial indexes that do not hold them (migration
// 0003), so kept rows cost the claim nothing.
func (q *Queries) KeepPublished() {
	q.setRemove(`UPDATE %s SET published_at = clock_timestamp()`, `published_at IS NULL`)
}

// PurgeBatch is the most kept rows one purge statement deletes: short transactions,
// short locks, little WAL at a time.
const PurgeBatch = 1000

// Purge deletes up to PurgeBatch rows of t published longer ago than retention, the
// oldest first (outbox_published_idx), and returns how many it deleted. SKIP LOCKED:
// several relays purge side by side. One round trip, one implicit transaction, no JIT;
// the numbers are literals.
func Purge(ctx context.Context, db *sql.DB, t pg.Table, retention time.Duration) (int64, error) {
	res, err := db.ExecContext(ctx, `SET LOCAL jit = off; DELETE FROM `+t.String()+` WHERE id IN (
  SELECT id FROM `+t.String()+`
  WHERE published_at < now() - `+strconv.FormatFloat(retention.Seconds(), 'f', -1, 64)+` * interval '1 second'
  ORDER BY published_at
  LIMIT `+strconv.Itoa(PurgeBatch)+`
  FOR UPDATE SKIP LOCKED)`)
	if err != nil {
		return 0, fmt.Errorf("purge published rows of %s: %w", t, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("purge published rows of %s: %w", t, err)
	}
	return n, nil
}

// Since is the start of a replay: a time, or a duration before the database's now.
type Since struct {
	At  time.Time     // used when not zero
	Ago time.Duration // otherwise: now() - Ago
}

func (s Since) args() []any {
	if !s.At.IsZero() {
		return []any{s.At, nil}
	}
	return []any{nil, s.Ago.Seconds()}
}

const sinceWhere = `published_at >= coalesce($1::timestamptz, now() - $2::float8 * interval '1 second')`

// Replay makes the rows of t published at or after since pending again, as they were
// written: same id (the AMQP message_id, so that an inbox recognises a message it
// already has), same seq (a key's rows go out again in their order, ahead of the
// key's newer rows), attempts 0, due now. It wakes the relays and returns the number
// of rows; with dryRun it only counts them.
func Replay(ctx context.Context, db *sql.DB, t pg.Table, since Since, dryRun bool) (int64, error) {
	if dryRun {
		var n int64
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+t.String()+` WHERE `+sinceWhere, since.args()...).Scan(&n); err != nil {
			return 0, fmt.Errorf("replay %s: %w", t, err)
		}
		return n, nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", t, err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, `UPDATE `+t.String()+` SET published_at = NULL, attempts = 0, available_at = now()
WHERE `+sinceWhere, since.args()...)
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", t, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", t, err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, t.Channel()); err != nil {
		return 0, fmt.Errorf("replay %s: wake the relays: %w", t, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("replay %s: %w", t, err)
	}
	return n, nil
}
