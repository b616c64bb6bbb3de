package outboxdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
)

// The heartbeat table of outbox t (migration 0004): one row per relay instance.
func relaysTable(t pg.Table) string { return t.Ident("_relays") }

// Beat records that the relay instance of table t is alive and published published
// rows over the last minute; it also removes rows of instances gone for an hour (a
// relay killed before it could remove its own). It returns ErrNoHeartbeatTable when
// the table's migration 0004 has not run.
func Beat(ctx context.Context, db *sql.DB, t pg.Table, instance string, published int64, purge bool) error {
	q := `INSERT INTO ` + relaysTable(t) + ` (instance, seen_at, published_last_minute) VALUES ($1, now(), $2)
	ON CONFLICT (instance) DO UPDATE SET seen_at = now(), published_last_minute = excluded.published_last_minute`
	if _, err := db.ExecContext(ctx, q, instance, published); err != nil {
		return heartbeatError(err)
	}
	if purge {
		if _, err := db.ExecContext(ctx, `DELETE FROM `+relaysTable(t)+` WHERE seen_at < now() - interval '1 hour'`); err != nil {
			return heartbeatError(err)
		}
	}
	return nil
}

// Leave removes the heartbeat row of a relay instance that stops.
func Leave(ctx context.Context, db *sql.DB, t pg.Table, instance string) error {
	_, err := db.ExecContext(ctx, `DELETE FROM `+relaysTable(t)+` WHERE instance = $1`, instance)
	return heartbeatError(err)
}

// ErrNoHeartbeatTable is returned by Beat and Leave when the heartbeat table does not
// exist (the outbox was migrated by an older sidebox).
var ErrNoHeartbeatTable = errors.New("no heartbeat table; run `sidebox migrate up`")

func heartbeatError(err error) error {
	if err == nil {
		return nil
	}
	if pe, ok := errors.AsType[*pq.Error](err); ok && pe.Code == "42P01" { // undefined_table
		return ErrNoHeartbeatTable
	}
	return fmt.Errorf("relay heartbeat: %w", err)
}

// Detail is what `sidebox status` shows of an outbox table beyond State: its relays
// and the errors of its oldest failed rows. A nil field is unknown (no heartbeat
// table) or absent (no such row).
type Detail struct {
	// Relays counts the relay instances whose heartbeat was seen in the last minute.
	Relays *int64 `json:"relays"`
	// PublishedLastMinute is the rows those relays published over the last minute.
	PublishedLastMinute *int64 `json:"published_last_minute"`
	// OldestRetryingError is the last error of the oldest retrying row.
	OldestRetryingError *string `json:"oldest_retrying_error"`
	// OldestDeadError is the last error of the oldest dead row.
	OldestDeadError *string `json:"oldest_dead_error"`
}

// ReadDetail reads the Detail of outbox table t; nil, nil when t does not exist. The
// errors come from the small partial indexes of failed rows (outbox_retrying_idx,
// outbox_dead_idx), so the cost does not grow with the backlog.
func ReadDetail(ctx context.Context, db *sql.DB, t pg.Table) (*Detail, error) {
	var d Detail
	found, err := pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		var retrying, dead sql.NullString
		err := tx.QueryRowContext(ctx, fmt.Sprintf(`SELECT
		    (SELECT coalesce(last_error, '') FROM %[1]s WHERE attempts > 0 AND dead_at IS NULL AND published_at IS NULL ORDER BY created_at LIMIT 1),
		    (SELECT coalesce(last_error, '') FROM %[1]s WHERE dead_at IS NOT NULL ORDER BY created_at LIMIT 1)`, t)).Scan(&retrying, &dead)
		if err != nil {
			return fmt.Errorf("read errors of outbox %s: %w", t, err)
		}
		if retrying.Valid {
			d.OldestRetryingError = &retrying.String
		}
		if dead.Valid {
			d.OldestDeadError = &dead.String
		}
		var beats bool
		if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, relaysTable(t)).Scan(&beats); err != nil {
			return fmt.Errorf("look up table %s: %w", relaysTable(t), err)
		}
		if !beats {
			return nil
		}
		var n, published int64
		if err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(published_last_minute), 0)::bigint FROM `+relaysTable(t)+
			` WHERE seen_at > now() - interval '1 minute'`).Scan(&n, &published); err != nil {
			return fmt.Errorf("read relays of outbox %s: %w", t, err)
		}
		d.Relays, d.PublishedLastMinute = &n, &published
		return nil
	})
	if !found || err != nil {
		return nil, err
	}
	return &d, nil
}

// Autovacuum returns why autovacuum does not run for table t: "" when it does, else
// "autovacuum is off on the server" or "autovacuum_enabled = false on the table". The
// claim's plans rely on the table's statistics, which autovacuum keeps (ANALYZE).
func Autovacuum(ctx context.Context, db *sql.DB, t pg.Table) (string, error) {
	var server, table bool
	err := db.QueryRowContext(ctx, `SELECT current_setting('autovacuum') = 'on',
    coalesce((SELECT o.option_value::bool FROM pg_class c, pg_options_to_table(c.reloptions) o
              WHERE c.oid = $1::regclass AND o.option_name = 'autovacuum_enabled'), true)`, t.String()).Scan(&server, &table)
	switch {
	case err != nil:
		return "", fmt.Errorf("read the autovacuum settings of %s: %w", t, err)
	case !server:
		return "autovacuum is off on the server", nil
	case !table:
		return "autovacuum_enabled = false on the table", nil
	}
	return "", nil
}
