package outboxdb

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
)

// DeadRow is a dead outbox row, as `sidebox dead` shows it.
type DeadRow struct {
	ID          string    `json:"id"`
	Seq         int64     `json:"seq"`
	OrderingKey *string   `json:"ordering_key"`
	Exchange    string    `json:"exchange"`
	RoutingKey  string    `json:"routing_key"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error"`
	CreatedAt   time.Time `json:"created_at"`
	DeadAt      time.Time `json:"dead_at"`
	// AgeSeconds is how long ago the row was written, on the database clock.
	AgeSeconds float64 `json:"age_seconds"`
}

// deadWhere selects dead rows by the selector's parameters. Dead rows are few and
// outbox_dead_idx holds them: the statement never scans live rows.
const deadWhere = `dead_at IS NOT NULL
  AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
  AND ($2::text[] IS NULL OR ordering_key = ANY($2::text[]))
  AND ($3::float8 IS NULL OR created_at < now() - $3::float8 * interval '1 second')`

const deadColumns = `id::text, seq, ordering_key, exchange, routing_key, attempts, coalesce(last_error, ''),
    created_at, %s, extract(epoch FROM now() - created_at)::float8`

func scanDead(rs *sql.Rows) ([]DeadRow, error) {
	return scanAll(rs, func(r *DeadRow) []any {
		return []any{&r.ID, &r.Seq, &r.OrderingKey, &r.Exchange, &r.RoutingKey, &r.Attempts, &r.LastError,
			&r.CreatedAt, &r.DeadAt, &r.AgeSeconds}
	})
}

// ListDead returns the dead rows of t that s picks (every one when s is empty), in seq
// order, at most limit (0: no limit). found is false when t does not exist.
func ListDead(ctx context.Context, db *sql.DB, t pg.Table, s pg.DeadSelector, limit int) (rows []DeadRow, found bool, err error) {
	found, err = pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		var lim any
		if limit > 0 {
			lim = limit
		}
		rs, err := tx.QueryContext(ctx, `SELECT `+fmt.Sprintf(deadColumns, "dead_at")+` FROM `+t.String()+`
WHERE `+deadWhere+`
ORDER BY seq LIMIT $4`, append(s.Args(), lim)...)
		if err == nil {
			rows, err = scanDead(rs)
		}
		if err != nil {
			return fmt.Errorf("list dead rows of %s: %w", t, err)
		}
		return nil
	})
	return rows, found, err
}

// Retry makes the dead rows of t that s picks pending again: attempts back to 0, due
// now. They keep their id and seq, so a row re-enters its key's order at its original
// place, ahead of the rows written after it. last_error stays until the next attempt.
// The relays are woken by a notification on the table's channel. With dryRun nothing
// changes; the rows that would are returned.
func Retry(ctx context.Context, db *sql.DB, t pg.Table, s pg.DeadSelector, dryRun bool) ([]DeadRow, error) {
	return changeDead(ctx, db, t, s, dryRun, `UPDATE `+t.String()+` SET dead_at = NULL, attempts = 0, available_at = now()
WHERE `+deadWhere+`
RETURNING `+fmt.Sprintf(deadColumns, "now()"))
}

// Discard deletes the dead rows of t that s picks; the rows behind them in their keys
// move on. With dryRun nothing changes; the rows that would are returned.
func Discard(ctx context.Context, db *sql.DB, t pg.Table, s pg.DeadSelector, dryRun bool) ([]DeadRow, error) {
	return changeDead(ctx, db, t, s, dryRun, `DELETE FROM `+t.String()+`
WHERE `+deadWhere+`
RETURNING `+fmt.Sprintf(deadColumns, "dead_at"))
}

// changeDead runs change (an UPDATE or DELETE of the rows deadWhere picks) in one
// transaction and notifies the relays. A relay never locks a dead row, and a row it is
// just marking dead is waited for and then taken as dead: the statement is safe while
// relays run.
func changeDead(ctx context.Context, db *sql.DB, t pg.Table, s pg.DeadSelector, dryRun bool, change string) ([]DeadRow, error) {
	if s.Empty() {
		return nil, pg.ErrNoSelector
	}
	if dryRun {
		rows, found, err := ListDead(ctx, db, t, s, 0)
		if err == nil && !found {
			err = fmt.Errorf("table %s does not exist", t)
		}
		return rows, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("dead rows of %s: %w", t, err)
	}
	defer func() { _ = tx.Rollback() }()
	rs, err := tx.QueryContext(ctx, change, s.Args()...)
	var rows []DeadRow
	if err == nil {
		rows, err = scanDead(rs)
	}
	if err != nil {
		return nil, fmt.Errorf("dead rows of %s: %w", t, err)
	}
	if len(rows) > 0 {
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, t.Channel()); err != nil {
			return nil, fmt.Errorf("wake the relays of %s: %w", t, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("dead rows of %s: %w", t, err)
	}
	slices.SortFunc(rows, func(a, b DeadRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return rows, nil
}
