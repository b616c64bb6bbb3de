// Package status measures the outbox and inbox tables: the queries behind
// `sidebox status` and the Sampler that keeps the backlog gauges current.
package status

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/sidebox/sidebox/internal/pg"
)

// Outbox is the state of an outbox table.
type Outbox struct {
	// Pending rows wait for their first publish (dead_at IS NULL AND attempts = 0).
	Pending int64 `json:"pending"`
	// Retrying rows failed at least once and wait for a retry (dead_at IS NULL AND attempts > 0).
	Retrying int64 `json:"retrying"`
	// Dead rows are kept after their last allowed attempt (dead_at IS NOT NULL).
	Dead int64 `json:"dead"`
	// OldestPendingAgeSeconds is, on the database clock, how long the longest-waiting
	// live row has been due: a retrying row since its created_at, a pending row since
	// the later of created_at and available_at (a delayed message is not late before
	// its time). Rows not due yet are left out; 0 when no row is due.
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	// BlockedKeys counts ordering keys whose head row (lowest seq) is retrying or dead:
	// the rows behind it wait.
	BlockedKeys int64 `json:"blocked_keys"`
}

// Inbox is the state of an inbox table, over all consumers.
type Inbox struct {
	// Unprocessed rows are stored and wait for the service (processed_at IS NULL AND dead_at IS NULL).
	Unprocessed int64 `json:"unprocessed"`
	// Dead rows failed processing for good (dead_at IS NOT NULL).
	Dead int64 `json:"dead"`
}

// Report is the output of `sidebox status`; a nil part means the table does not exist.
type Report struct {
	Outbox *Outbox `json:"outbox"`
	Inbox  *Inbox  `json:"inbox"`
}

// Every count in one pass over the table, so a refresh costs one scan even with a large
// backlog (no index covers attempts or dead rows, so separate counts would each scan).
const outboxQuery = `
SELECT
    count(*) FILTER (WHERE dead_at IS NULL AND attempts = 0),
    count(*) FILTER (WHERE dead_at IS NULL AND attempts > 0),
    count(*) FILTER (WHERE dead_at IS NOT NULL),
    coalesce(extract(epoch FROM now() - min(
        CASE WHEN attempts > 0 THEN created_at ELSE greatest(created_at, available_at) END
    ) FILTER (WHERE dead_at IS NULL AND (attempts > 0 OR available_at <= now()))), 0)::float8
FROM %s`

// A key is blocked when its head row is retrying or dead. Run only when there are failed
// rows; each failed row with a key is checked for an older row of the same key among the
// live rows (outbox_ordering_idx) and among the dead ones (outbox_dead_idx).
const blockedQuery = `
SELECT count(*) FROM %[1]s o
WHERE o.ordering_key IS NOT NULL
  AND (o.attempts > 0 OR o.dead_at IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NOT NULL)`

// The Sampler's count of blocked keys looks at 10,000 failed rows at most: a lower
// bound when more have failed.
const blockedSampleQuery = `
SELECT count(*) FROM (
    SELECT o.ordering_key, o.seq FROM %[1]s o
    WHERE o.ordering_key IS NOT NULL AND (o.attempts > 0 OR o.dead_at IS NOT NULL)
    LIMIT 10000) o
WHERE NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NOT NULL)`

const inboxQuery = `
SELECT
    (SELECT count(*) FROM %[1]s WHERE processed_at IS NULL AND dead_at IS NULL),
    (SELECT count(*) FROM %[1]s WHERE dead_at IS NOT NULL)`

// SampleLimit bounds the rows each count of the Sampler reads, so that a refresh costs
// the same with any backlog. A count that reaches it is replaced by an estimate.
const SampleLimit = 100_000

// The Sampler's counts: each reads at most $1 entries of a partial index. Above that,
// the outbox's live rows come from the statistics system's live-tuple count, which
// follows every committed insert and delete within seconds.
const outboxSampleQuery = `
SELECT
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE dead_at IS NULL LIMIT $1) x),
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE attempts > 0 AND dead_at IS NULL LIMIT $1) x),
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE dead_at IS NOT NULL LIMIT $1) x),
    coalesce((SELECT n_live_tup FROM pg_stat_all_tables WHERE relid = '%[1]s'::regclass), 0),
    coalesce(extract(epoch FROM now() - least(
        (SELECT min(created_at) FROM %[1]s WHERE attempts > 0 AND dead_at IS NULL),
        (SELECT min(greatest(created_at, available_at)) FROM (
            SELECT created_at, available_at FROM %[1]s
            WHERE dead_at IS NULL AND attempts = 0 AND available_at <= now()
            ORDER BY available_at LIMIT 1000) p)
    )), 0)::float8`

// For the inbox, above the limit: the partial index's entries as the planner estimates
// them (reltuples scaled to the index's current size); NULL without the index.
const inboxSampleQuery = `
SELECT
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE processed_at IS NULL AND dead_at IS NULL LIMIT $1) x),
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE dead_at IS NOT NULL LIMIT $1) x),
    %[2]s,
    %[3]s`

// indexEstimate is the planner's estimate of the entries of index idx.
func indexEstimate(idx string) string {
	return `(SELECT (c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint
        FROM pg_class c WHERE c.oid = to_regclass('` + idx + `') AND c.relpages > 0 AND c.reltuples >= 0)`
}

// OutboxStatus measures the outbox table t exactly, in one scan of it; it returns nil,
// nil when t does not exist.
func OutboxStatus(ctx context.Context, db *sql.DB, t pg.Table) (*Outbox, error) {
	return outboxStatus(ctx, db, t, 0)
}

// outboxStatus measures t; limit > 0 bounds each count (see SampleLimit).
func outboxStatus(ctx context.Context, db *sql.DB, t pg.Table, limit int64) (*Outbox, error) {
	var o Outbox
	found, err := inReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		var err error
		if limit == 0 {
			err = tx.QueryRowContext(ctx, fmt.Sprintf(outboxQuery, t)).Scan(&o.Pending, &o.Retrying, &o.Dead, &o.OldestPendingAgeSeconds)
		} else {
			var live, stats int64
			err = tx.QueryRowContext(ctx, fmt.Sprintf(outboxSampleQuery, t), limit).Scan(&live, &o.Retrying, &o.Dead, &stats, &o.OldestPendingAgeSeconds)
			o.Pending = live - o.Retrying
			if live >= limit {
				o.Pending = max(stats-o.Dead-o.Retrying, o.Pending)
			}
		}
		if err != nil {
			return fmt.Errorf("count outbox %s: %w", t, err)
		}
		if o.Retrying+o.Dead == 0 {
			return nil // no failed row, no blocked key
		}
		q := blockedQuery
		if limit > 0 {
			q = blockedSampleQuery
		}
		if err := tx.QueryRowContext(ctx, fmt.Sprintf(q, t)).Scan(&o.BlockedKeys); err != nil {
			return fmt.Errorf("count blocked keys of outbox %s: %w", t, err)
		}
		return nil
	})
	if !found || err != nil {
		return nil, err
	}
	return &o, nil
}

// InboxStatus measures the inbox table t exactly; it returns nil, nil when t does not
// exist.
func InboxStatus(ctx context.Context, db *sql.DB, t pg.Table) (*Inbox, error) {
	return inboxStatus(ctx, db, t, 0)
}

// inboxStatus measures t; limit > 0 bounds each count (see SampleLimit).
func inboxStatus(ctx context.Context, db *sql.DB, t pg.Table, limit int64) (*Inbox, error) {
	var in Inbox
	found, err := inReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		var err error
		if limit == 0 {
			err = tx.QueryRowContext(ctx, fmt.Sprintf(inboxQuery, t)).Scan(&in.Unprocessed, &in.Dead)
		} else {
			var unprocessed, dead sql.NullInt64
			q := fmt.Sprintf(inboxSampleQuery, t, indexEstimate(t.Ident("_unprocessed_idx")), indexEstimate(t.Ident("_dead_idx")))
			err = tx.QueryRowContext(ctx, q, limit).Scan(&in.Unprocessed, &in.Dead, &unprocessed, &dead)
			if in.Unprocessed >= limit {
				in.Unprocessed = max(in.Unprocessed, unprocessed.Int64)
			}
			if in.Dead >= limit {
				in.Dead = max(in.Dead, dead.Int64)
			}
		}
		if err != nil {
			return fmt.Errorf("count inbox %s: %w", t, err)
		}
		return nil
	})
	if !found || err != nil {
		return nil, err
	}
	return &in, nil
}

// Collect measures both tables.
func Collect(ctx context.Context, db *sql.DB, outbox, inbox pg.Table) (Report, error) {
	var r Report
	var err error
	if r.Outbox, err = OutboxStatus(ctx, db, outbox); err != nil {
		return Report{}, err
	}
	if r.Inbox, err = InboxStatus(ctx, db, inbox); err != nil {
		return Report{}, err
	}
	return r, nil
}

// inReadOnlyTx runs fn in one read-only REPEATABLE READ transaction, so that every
// number of a report comes from the same snapshot, after checking that t exists in it.
// It reports found = false when t does not exist.
func inReadOnlyTx(ctx context.Context, db *sql.DB, t pg.Table, fn func(*sql.Tx) error) (found bool, err error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return false, fmt.Errorf("begin status transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.String()).Scan(&found); err != nil {
		return false, fmt.Errorf("look up table %s: %w", t, err)
	}
	if !found {
		return false, nil
	}
	// Every query here is over the whole table: its estimated cost grows with the
	// backlog, and JIT-compiling it would add the better part of a second.
	if _, err := tx.ExecContext(ctx, `SET LOCAL jit = off`); err != nil {
		return false, fmt.Errorf("status transaction: %w", err)
	}
	return true, fn(tx)
}
