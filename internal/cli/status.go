package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/status"
)

func statusCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("status")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	cfg, db, err := connectConfigured(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	r, err := status.Collect(ctx, db, cfg.Outbox, cfg.Inbox)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if err := addOutboxStates(ctx, db, cfg, &r); err != nil {
		return err
	}
	if *asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	return printStatus(stdout, cfg, r)
}

// printStatus writes the report as a table for people.
func printStatus(w io.Writer, cfg *config.Config, r status.Report) error {
	var b strings.Builder
	row := func(name string, value any) { fmt.Fprintf(&b, "  %-20s %12v\n", name, value) }

	fmt.Fprintf(&b, "outbox (table %s)\n", cfg.Outbox)
	if o := r.Outbox; o == nil {
		b.WriteString("  not installed: run `sidebox migrate up`\n")
	} else {
		row("pending", o.Pending)
		row("retrying", o.Retrying)
		row("dead", o.Dead)
		row("blocked keys", o.BlockedKeys)
		row("oldest pending age", time.Duration(o.OldestPendingAgeSeconds*float64(time.Second)).Round(time.Millisecond))
		explainOutbox(&b, o)
	}
	fmt.Fprintf(&b, "inbox (table %s)\n", cfg.Inbox)
	if in := r.Inbox; in == nil {
		b.WriteString("  not installed: run `sidebox migrate up`\n")
	} else {
		row("unprocessed", in.Unprocessed)
		row("dead", in.Dead)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
