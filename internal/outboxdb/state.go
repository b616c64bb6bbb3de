package outboxdb

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/sidebox/sidebox/internal/pg"
)

// State is the state of an outbox table, as `sidebox status` reports it.
type State struct {
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
	// States details each state (count, oldest age, why the oldest failed rows
	// failed); filled by `sidebox status` from Detail, not by the sampler.
	States *States `json:"states,omitempty"`
}

// Every count in one pass over the table, so a refresh costs one scan even with a large
// backlog (no index covers attempts or dead rows, so separate counts would each scan).
const outboxQuery = `
SELECT
    count(*) FILTER (WHERE dead_at IS NULL AND published_at IS NULL AND attempts = 0),
    count(*) FILTER (WHERE dead_at IS NULL AND published_at IS NULL AND attempts > 0),
    count(*) FILTER (WHERE dead_at IS NOT NULL),
    coalesce(extract(epoch FROM now() - min(
        CASE WHEN attempts > 0 THEN created_at ELSE greatest(created_at, available_at) END
    ) FILTER (WHERE dead_at IS NULL AND published_at IS NULL AND (attempts > 0 OR available_at <= now()))), 0)::float8
FROM %s`

// A key is blocked when its head row is retrying or dead. Run only when there are failed
// rows; each failed row with a key is checked for an older row of the same key among the
// live rows (outbox_ordering_idx) and among the dead ones (outbox_dead_idx).
const blockedQuery = `
SELECT count(*) FROM %[1]s o
WHERE o.ordering_key IS NOT NULL
  AND (o.attempts > 0 OR o.dead_at IS NOT NULL) AND o.published_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NULL AND h.published_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NOT NULL)`

// The Sampler's count of blocked keys looks at 10,000 failed rows at most: a lower
// bound when more have failed.
const blockedSampleQuery = `
SELECT count(*) FROM (
    SELECT o.ordering_key, o.seq FROM %[1]s o
    WHERE o.ordering_key IS NOT NULL AND (o.attempts > 0 OR o.dead_at IS NOT NULL) AND o.published_at IS NULL
    LIMIT 10000) o
WHERE NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NULL AND h.published_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM %[1]s h WHERE h.ordering_key = o.ordering_key AND h.seq < o.seq AND h.dead_at IS NOT NULL)`

// The Sampler's counts: each reads at most $1 entries of a partial index. Above that,
// the outbox's live rows come from the statistics system's live-tuple count, which
// follows every committed insert and delete within seconds.
const outboxSampleQuery = `
SELECT
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE dead_at IS NULL AND published_at IS NULL LIMIT $1) x),
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE attempts > 0 AND dead_at IS NULL AND published_at IS NULL LIMIT $1) x),
    (SELECT count(*) FROM (SELECT FROM %[1]s WHERE dead_at IS NOT NULL LIMIT $1) x),
    coalesce((SELECT n_live_tup FROM pg_stat_all_tables WHERE relid = '%[1]s'::regclass), 0),
    coalesce(extract(epoch FROM now() - least(
        (SELECT min(created_at) FROM %[1]s WHERE attempts > 0 AND dead_at IS NULL AND published_at IS NULL),
        (SELECT min(greatest(created_at, available_at)) FROM (
            SELECT created_at, available_at FROM %[1]s
            WHERE dead_at IS NULL AND published_at IS NULL AND attempts = 0 AND available_at <= now()
            ORDER BY available_at LIMIT 1000) p)
    )), 0)::float8`

// Count measures the outbox table t in one read-only snapshot; it returns nil, nil when
// t does not exist. With limit 0 the counts are exact, in one scan of the table; with
// limit > 0 each count reads at most limit index entries and is replaced by an
// estimate when it reaches it, so that the cost is the same with any backlog.
func Count(ctx context.Context, db *sql.DB, t pg.Table, limit int64) (*State, error) {
	var o State
	found, err := pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
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

// SampledCountSQL returns the statements of a count with a limit, for checking their
// plans: the counts (parameter $1, the limit) and the blocked keys (no parameter).
func SampledCountSQL(t pg.Table) (counts, blocked string) {
	return fmt.Sprintf(outboxSampleQuery, t), fmt.Sprintf(blockedSampleQuery, t)
}
