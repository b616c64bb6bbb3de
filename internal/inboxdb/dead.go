package inboxdb

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/sidebox/sidebox/internal/pg"
)

// DeadRow is a dead inbox row, as `sidebox dead --inbox` shows it.
type DeadRow struct {
	Consumer    string    `json:"consumer"`
	MessageID   string    `json:"message_id"`
	Seq         int64     `json:"seq"`
	OrderingKey *string   `json:"ordering_key"`
	Exchange    string    `json:"exchange"`
	RoutingKey  string    `json:"routing_key"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error"`
	ReceivedAt  time.Time `json:"received_at"`
	DeadAt      time.Time `json:"dead_at"`
	// AgeSeconds is how long ago the row was received, on the database clock.
	AgeSeconds float64 `json:"age_seconds"`
}

// deadWhere selects dead rows by a pg.DeadSelector's parameters and $4, the consumer
// (NULL: every consumer). inbox_dead_idx holds the dead rows: live and processed rows
// are never scanned.
const deadWhere = `dead_at IS NOT NULL
  AND ($1::text[] IS NULL OR message_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR ordering_key = ANY($2::text[]))
  AND ($3::float8 IS NULL OR received_at < now() - $3::float8 * interval '1 second')
  AND ($4::text IS NULL OR consumer = $4::text)`

const deadColumns = `consumer, message_id, seq, ordering_key, exchange, routing_key, attempts,
    coalesce(last_error, ''), received_at, %s, extract(epoch FROM now() - received_at)::float8`

func scanDead(rs *sql.Rows) ([]DeadRow, error) {
	var out []DeadRow
	defer func() { _ = rs.Close() }()
	for rs.Next() {
		var r DeadRow
		if err := rs.Scan(&r.Consumer, &r.MessageID, &r.Seq, &r.OrderingKey, &r.Exchange, &r.RoutingKey, &r.Attempts,
			&r.LastError, &r.ReceivedAt, &r.DeadAt, &r.AgeSeconds); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

func deadArgs(s pg.DeadSelector, consumer string) []any {
	var c any
	if consumer != "" {
		c = consumer
	}
	return append(s.Args(), c)
}

// ListDead returns the dead rows of t that s picks (every one when s is empty), of
// consumer ("" for all), in seq order, at most limit (0: no limit). found is false when
// t does not exist.
func ListDead(ctx context.Context, db *sql.DB, t pg.Table, consumer string, s pg.DeadSelector, limit int) (rows []DeadRow, found bool, err error) {
	found, err = pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		var lim any
		if limit > 0 {
			lim = limit
		}
		rs, err := tx.QueryContext(ctx, `SELECT `+fmt.Sprintf(deadColumns, "dead_at")+` FROM `+t.String()+`
WHERE `+deadWhere+`
ORDER BY seq LIMIT $5`, append(deadArgs(s, consumer), lim)...)
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

// Retry makes the dead rows of t that s picks unprocessed again: attempts back to 0,
// due now. They keep their seq, so with ordered processing a row is again the head of
// its key, ahead of the rows received after it. With dryRun nothing changes; the rows
// that would are returned.
func Retry(ctx context.Context, db *sql.DB, t pg.Table, consumer string, s pg.DeadSelector, dryRun bool) ([]DeadRow, error) {
	return changeDead(ctx, db, t, consumer, s, dryRun, `UPDATE `+t.String()+` SET dead_at = NULL, attempts = 0, available_at = now()
WHERE `+deadWhere+`
RETURNING `+fmt.Sprintf(deadColumns, "now()"))
}

// Discard marks the dead rows of t that s picks processed without processing them:
// the rows behind them in their keys move on, and the row stays until the retention
// purges it, so that a redelivery of the message is still recognised as a duplicate.
// last_error keeps the reason, prefixed "discarded: ". With dryRun nothing changes; the
// rows that would are returned.
func Discard(ctx context.Context, db *sql.DB, t pg.Table, consumer string, s pg.DeadSelector, dryRun bool) ([]DeadRow, error) {
	return changeDead(ctx, db, t, consumer, s, dryRun, `UPDATE `+t.String()+` SET dead_at = NULL, processed_at = now(),
    last_error = 'discarded: ' || coalesce(last_error, '')
WHERE `+deadWhere+`
RETURNING `+fmt.Sprintf(deadColumns, "now()"))
}

// changeDead runs change in one transaction. The processor never claims a dead row,
// and one it is just marking dead is waited for and then taken as dead: safe while
// processors run.
func changeDead(ctx context.Context, db *sql.DB, t pg.Table, consumer string, s pg.DeadSelector, dryRun bool, change string) ([]DeadRow, error) {
	if s.Empty() {
		return nil, pg.ErrNoSelector
	}
	if dryRun {
		rows, found, err := ListDead(ctx, db, t, consumer, s, 0)
		if err == nil && !found {
			err = fmt.Errorf("table %s does not exist", t)
		}
		return rows, err
	}
	rs, err := db.QueryContext(ctx, change, deadArgs(s, consumer)...)
	var rows []DeadRow
	if err == nil {
		rows, err = scanDead(rs)
	}
	if err != nil {
		return nil, fmt.Errorf("dead rows of %s: %w", t, err)
	}
	slices.SortFunc(rows, func(a, b DeadRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return rows, nil
}
