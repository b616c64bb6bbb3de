package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
)

// replayCmd is `sidebox replay --since T [--dry-run]`: the outbox rows kept by
// SIDEBOX_OUTBOX_RETENTION and published since T are published again, as they were
// (same id, same seq).
func replayCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("replay")
	sinceFlag := fs.String("since", "", "republish rows published at or after this time: RFC 3339 (2026-12-01T08:00:00Z) or a duration ago (90m)")
	dryRun := fs.Bool("dry-run", false, "count the rows, change nothing")
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
	cfg, db, err := connectConfigured(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := outboxdb.Replay(ctx, db, cfg.Outbox, since, *dryRun)
	if err != nil {
		return err
	}
	what := "outbox table " + cfg.Outbox.String()
	switch {
	case n == 0:
		_, err = fmt.Fprintf(stdout, "%s: no kept rows published since %s (rows are kept only with SIDEBOX_OUTBOX_RETENTION or SIDEBOX_OUTBOX_PARTITIONS=daily); nothing changed\n", what, *sinceFlag)
	case *dryRun:
		_, err = fmt.Fprintf(stdout, "%s: would republish %d rows published since %s (dry run: nothing changed)\n", what, n, *sinceFlag)
	default:
		_, err = fmt.Fprintf(stdout, "%s: republishing %d rows published since %s, with their ids and order\n", what, n, *sinceFlag)
	}
	return err
}
