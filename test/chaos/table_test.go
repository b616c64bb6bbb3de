package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// row is one scenario's line of the table, with its notes.
type row struct {
	scenario                                                        string
	committed, delivered, lost, phantom, duplicates, absorbed, dead int
	notes                                                           []string // dead reasons and scenario observations
	failed                                                          []string // scenario checks that failed
}

// table renders the rows as the suite's Markdown table, followed by the notes.
func table(rows []row) string {
	var b strings.Builder
	b.WriteString("| scenario | committed | delivered | lost | phantom | duplicates | absorbed | dead |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d |\n",
			r.scenario, r.committed, r.delivered, r.lost, r.phantom, r.duplicates, r.absorbed, r.dead)
	}
	b.WriteString("\n")
	for _, r := range rows {
		if len(r.notes)+len(r.failed) == 0 {
			continue
		}
		fmt.Fprintf(&b, "**%s**\n", r.scenario)
		for _, f := range r.failed {
			fmt.Fprintf(&b, "- FAILED: %s\n", strings.ReplaceAll(f, "\n", " "))
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// writeResults writes the table to results/latest.md with when and on what it ran.
func writeResults(rows []row, form, commit string, took time.Duration) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# sidebox fault suite: latest results\n\n")
	fmt.Fprintf(&b, "Run %s on commit %s, %s form, %s in all (`make chaos`). Definitions of the columns: [doc.go](../doc.go).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), commit, form, took.Round(time.Second))
	b.WriteString(table(rows))
	if err := os.MkdirAll("results", 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join("results", "latest.md"), []byte(b.String()), 0o644)
}
