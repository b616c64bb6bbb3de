package status

import (
	"context"
	"database/sql"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// Detail is what `sidebox status` shows of an outbox table beyond its counts: relay
// instances and their throughput over the last minute, the errors of its oldest failed
// rows.
type Detail = outboxdb.Detail

// Table is one table's part of the report. State is an *Outbox or an *Inbox, nil
// when the table does not exist; Detail is set for an outbox table that exists.
type Table struct {
	Kind   string  `json:"kind"` // "outbox" or "inbox"
	Table  string  `json:"table"`
	State  any     `json:"state"`
	Detail *Detail `json:"detail,omitempty"`
}

// Tables is the report of `sidebox status` with every configured table: the contract's
// keys (outbox, inbox: the first table of each kind) and, additively, tables, each
// table in the order configured, outbox tables first.
type Tables struct {
	Report
	Tables []Table `json:"tables"`
}

// CollectTables measures every table: the first of each kind as Collect does, the
// others alike, and the detail of every outbox table.
func CollectTables(ctx context.Context, db *sql.DB, outboxes, inboxes []pg.Table) (Tables, error) {
	var r Tables
	var err error
	if r.Report, err = Collect(ctx, db, first(outboxes), first(inboxes)); err != nil {
		return Tables{}, err
	}
	for i, t := range outboxes {
		o := r.Outbox
		if i > 0 {
			if o, err = OutboxStatus(ctx, db, t); err != nil {
				return Tables{}, err
			}
		}
		tb := Table{Kind: "outbox", Table: t.String()}
		if o != nil {
			tb.State = o
			if tb.Detail, err = outboxdb.ReadDetail(ctx, db, t); err != nil {
				return Tables{}, err
			}
			if o.States, err = OutboxStates(ctx, db, t); err != nil {
				return Tables{}, err
			}
		}
		r.Tables = append(r.Tables, tb)
	}
	for i, t := range inboxes {
		in := r.Inbox
		if i > 0 {
			if in, err = InboxStatus(ctx, db, t); err != nil {
				return Tables{}, err
			}
		}
		tb := Table{Kind: "inbox", Table: t.String()}
		if in != nil {
			tb.State = in
		}
		r.Tables = append(r.Tables, tb)
	}
	return r, nil
}

func first(ts []pg.Table) pg.Table {
	if len(ts) == 0 {
		return pg.Table{}
	}
	return ts[0]
}
