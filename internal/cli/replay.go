package cli

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// replayCmd is `sidebox replay --since T [--dry-run]`: the outbox rows kept by
// SIDEBOX_OUTBOX_RETENTION and published since T are published again, as they were
// (same id, same seq).
func replayCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("replay")
	sinceFlag := fs.String("since", "", "republish rows published at or after this time: RFC 3339 (2026-12-01T08:00:00Z) or a duration ago (90m)")
	dryRun := fs.Bool("dry-run", false, "count the rows, change nothing")
	var named listFlag
	fs.Var(&named, "table", "only this outbox table (repeatable, or comma-separated); default: every table of SIDEBOX_OUTBOX_TABLE")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	var since outboxdb.Since
	switch {
	case *sinceFlag == "":
		return usagef("replay: --since is required")
	default:
		if at, err := time.Parse(time.RFC3339, *sinceFlag); err == nil {
			since.At = at
		} else if ago, err := time.ParseDuration(*sinceFlag); err == nil && ago > 0 {
			since.Ago = ago
		} else {
			return usagef("replay: --since %q is neither an RFC 3339 time nor a positive duration", *sinceFlag)
		}
	}
	tables, db, err := openTables(ctx, fs.Name(), false, named)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, t := range tables {
		if err := replayTable(ctx, db, t, since, *sinceFlag, *dryRun, stdout); err != nil {
			return err
		}
	}
	return nil
}

// replayTable resets one table's kept rows published since and says what it did.
func replayTable(ctx context.Context, db *sql.DB, t pg.Table, since outboxdb.Since, sinceText string, dryRun bool, stdout io.Writer) error {
	n, err := outboxdb.Replay(ctx, db, t, since, dryRun)
	if err != nil {
		return fmt.Errorf("replay on outbox table %s: %w", t, err)
	}
	what := "outbox table " + t.String()
	switch {
	case n == 0:
		_, err = fmt.Fprintf(stdout, "%s: no kept rows published since %s (rows are kept only with SIDEBOX_OUTBOX_RETENTION or SIDEBOX_OUTBOX_PARTITIONS=daily); nothing changed\n", what, sinceText)
	case dryRun:
		_, err = fmt.Fprintf(stdout, "%s: would republish %d rows published since %s (dry run: nothing changed)\n", what, n, sinceText)
	default:
		_, err = fmt.Fprintf(stdout, "%s: republishing %d rows published since %s, with their ids and order\n", what, n, sinceText)
	}
	return err
}
