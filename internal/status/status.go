// Package status measures the outbox and inbox tables, through their SQL in
// internal/outboxdb and internal/inboxdb: the report of `sidebox status` and the
// Sampler that keeps the backlog gauges current.
package status

import (
	"context"
	"database/sql"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// Outbox is the state of an outbox table.
type Outbox = outboxdb.State

// Inbox is the state of an inbox table, over all consumers.
type Inbox = inboxdb.State

// Report is the output of `sidebox status`; a nil part means the table does not exist.
type Report struct {
	Outbox *Outbox `json:"outbox"`
	Inbox  *Inbox  `json:"inbox"`
}

// SampleLimit bounds the rows each count of the Sampler reads, so that a refresh costs
// the same with any backlog. A count that reaches it is replaced by an estimate.
const SampleLimit = 100_000

// OutboxStatus measures the outbox table t exactly, in one scan of it; it returns nil,
// nil when t does not exist.
func OutboxStatus(ctx context.Context, db *sql.DB, t pg.Table) (*Outbox, error) {
	return outboxdb.Count(ctx, db, t, 0)
}

// InboxStatus measures the inbox table t exactly; it returns nil, nil when t does not
// exist.
func InboxStatus(ctx context.Context, db *sql.DB, t pg.Table) (*Inbox, error) {
	return inboxdb.Count(ctx, db, t, 0)
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
