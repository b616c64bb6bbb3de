package outboxdb

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/sidebox/sidebox/internal/pg"
)

// States details each state of an outbox table for `sidebox status`: how many rows,
// how old the oldest is, and for failed rows why the oldest failed. It is additive to
// State (the "states" key of status --json).
type States struct {
	Pending  StateDetail `json:"pending"`
	Retrying StateDetail `json:"retrying"`
	Dead     StateDetail `json:"dead"`
}

// StateDetail is one state. Ages are seconds on the database clock: a pending row's
// since it became due, a retrying or dead row's since it was written. Oldest is nil
// when the state has no row (for pending: no row is due).
type StateDetail struct {
	Count            int64     `json:"count"`
	OldestAgeSeconds float64   `json:"oldest_age_seconds"`
	Oldest           *FailedAt `json:"oldest,omitempty"`
}

// FailedAt describes the oldest failed row of a state.
type FailedAt struct {
	ID         string `json:"id"`
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
	Attempts   int    `json:"attempts"`
	LastError  string `json:"last_error"`
	// NextAttemptInSeconds is how long until a retrying row is tried again (0: due).
	NextAttemptInSeconds float64 `json:"next_attempt_in_seconds,omitempty"`
}

// The oldest retrying row comes from outbox_retrying_idx (created_at, partial on
// retrying rows); the oldest dead row from the dead rows, which are few.
const (
	pendingDetailQuery = `
SELECT count(*) FILTER (WHERE dead_at IS NULL AND published_at IS NULL AND attempts = 0),
       coalesce(extract(epoch FROM now() - min(greatest(created_at, available_at))
           FILTER (WHERE dead_at IS NULL AND published_at IS NULL AND attempts = 0 AND available_at <= now())), 0)::float8
FROM %s`
	failedDetailQuery = `
SELECT id::text, exchange, routing_key, attempts, coalesce(last_error, ''),
       extract(epoch FROM now() - created_at)::float8,
       greatest(extract(epoch FROM available_at - now()), 0)::float8
FROM %s WHERE %s ORDER BY created_at LIMIT 1`
	retryingWhere  = `attempts > 0 AND dead_at IS NULL AND published_at IS NULL`
	deadStateWhere = `dead_at IS NOT NULL`
)

// ReadStates measures the states of the outbox table t exactly, in one read-only
// snapshot; nil, nil when t does not exist.
func ReadStates(ctx context.Context, db *sql.DB, t pg.Table) (*States, error) {
	var s States
	found, err := pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, fmt.Sprintf(pendingDetailQuery, t)).Scan(&s.Pending.Count, &s.Pending.OldestAgeSeconds); err != nil {
			return fmt.Errorf("detail pending rows of outbox %s: %w", t, err)
		}
		for _, st := range []struct {
			d     *StateDetail
			where string
		}{{&s.Retrying, retryingWhere}, {&s.Dead, deadStateWhere}} {
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM `+t.String()+` WHERE `+st.where).Scan(&st.d.Count); err != nil {
				return fmt.Errorf("count rows of outbox %s: %w", t, err)
			}
			if st.d.Count == 0 {
				continue
			}
			var f FailedAt
			err := tx.QueryRowContext(ctx, fmt.Sprintf(failedDetailQuery, t, st.where)).Scan(
				&f.ID, &f.Exchange, &f.RoutingKey, &f.Attempts, &f.LastError, &st.d.OldestAgeSeconds, &f.NextAttemptInSeconds)
			if err != nil {
				return fmt.Errorf("read the oldest failed row of outbox %s: %w", t, err)
			}
			if st.d == &s.Dead {
				f.NextAttemptInSeconds = 0
			}
			st.d.Oldest = &f
		}
		return nil
	})
	if !found || err != nil {
		return nil, err
	}
	return &s, nil
}

// OldestRetryingAge returns the age in seconds of the oldest retrying row of t (0 when
// none), from outbox_retrying_idx: one index entry, whatever the backlog. ok is false
// when t does not exist.
func OldestRetryingAge(ctx context.Context, db *sql.DB, t pg.Table) (age float64, ok bool, err error) {
	found, err := pg.InReadOnlyTx(ctx, db, t, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM `+t.String()+` WHERE `+retryingWhere).Scan(&age)
	})
	if err != nil {
		return 0, false, fmt.Errorf("oldest retrying row of outbox %s: %w", t, err)
	}
	return age, found, nil
}
