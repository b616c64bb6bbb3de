package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sidebox/sidebox/internal/status"
)

func statusCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("status")
	asJSON := fs.Bool("json", false, "print JSON")
	watch := &watchFlag{every: defaultWatch}
	fs.Var(watch, "watch", "refresh every `interval` (default 2s) until interrupted: --watch, --watch 5s or --watch=5s")
	if err := parseStatusFlags(fs, watch, args); err != nil {
		return err
	}
	cfg, db, err := connectConfigured(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	once := func() error {
		r, err := status.CollectTables(ctx, db, cfg.Outboxes, cfg.Inboxes)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if *asJSON {
			b, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		return printStatus(stdout, r)
	}
	if !watch.on {
		return once()
	}
	return watchStatus(ctx, stdout, watch.every, *asJSON, once)
}

// printStatus writes the report as a table for people, one section per table.
func printStatus(w io.Writer, r status.Tables) error {
	var b strings.Builder
	row := func(name string, value any) { fmt.Fprintf(&b, "  %-20s %12v\n", name, value) }

	for _, tb := range r.Tables {
		fmt.Fprintf(&b, "%s (table %s)\n", tb.Kind, tb.Table)
		switch s := tb.State.(type) {
		case nil:
			b.WriteString("  not installed: run `sidebox migrate up`\n")
		case *status.Outbox:
			o := s
			row("pending", o.Pending)
			row("retrying", o.Retrying)
			row("dead", o.Dead)
			row("blocked keys", o.BlockedKeys)
			row("oldest pending age", time.Duration(o.OldestPendingAgeSeconds*float64(time.Second)).Round(time.Millisecond))
			explainOutbox(&b, o)
			printDetail(&b, row, tb.Detail)
		case *status.Inbox:
			in := s
			row("unprocessed", in.Unprocessed)
			row("dead", in.Dead)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
