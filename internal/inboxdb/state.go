package inboxdb

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/sidebox/sidebox/internal/pg"
)

// State is the state of an inbox table over all consumers, as `sidebox status`
// reports it.
type State struct {
	// Unprocessed rows are stored and wait for the service (processed_at IS NULL AND dead_at IS NULL).
	Unprocessed int64 `json:"unprocessed"`
	// Dead rows failed processing for good (dead_at IS NOT NULL).
	Dead int64 `json:"dead"`
}

const inboxQuery = `
SELECT
    (SELECT count(*) FROM %[1]s WHERE processed_at IS NULL AND dead_at IS NULL),
    (SELECT count(*) FROM %[1]s WHERE dead_at IS NOT NULL)`

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

// Count measures the inbox table t in one read-only snapshot; it returns nil, nil when
// t does not exist. With limit 0 the counts are exact; with limit > 0 each count reads
// at most limit index entries and is replaced by the planner's estimate of the index
// when it reaches it, so that the cost is the same with any backlog.
func Count(ctx context.Context, db *sql.DB, t pg.Table, limit int64) (*State, error) {
	var in State
	found, err := pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
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

// SampledCountSQL returns the statement of a count with a limit (parameter $1), for
// checking its plan.
func SampledCountSQL(t pg.Table) string {
	return fmt.Sprintf(inboxSampleQuery, t, indexEstimate(t.Ident("_unprocessed_idx")), indexEstimate(t.Ident("_dead_idx")))
}
