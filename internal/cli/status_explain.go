package cli

import (
	"fmt"
	"strings"

	"github.com/sidebox/sidebox/internal/status"
)

// explainOutbox writes, under the outbox's counts, what its states hold and why the
// oldest failed rows failed.
func explainOutbox(b *strings.Builder, o *status.Outbox) {
	for _, line := range status.ExplainOutbox(o.States) {
		fmt.Fprintf(b, "  %s\n", line)
	}
}
