package cli

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/status"
)

// addOutboxStates adds the detail of each outbox state to the report (the "states"
// key of status --json).
func addOutboxStates(ctx context.Context, db *sql.DB, cfg *config.Config, r *status.Report) error {
	if r.Outbox == nil {
		return nil
	}
	st, err := status.OutboxStates(ctx, db, cfg.Outbox)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	r.Outbox.States = st
	return nil
}

// explainOutbox writes, under the outbox's counts, what its states hold and why the
// oldest failed rows failed.
func explainOutbox(b *strings.Builder, o *status.Outbox) {
	for _, line := range status.ExplainOutbox(o.States) {
		fmt.Fprintf(b, "  %s\n", line)
	}
}
