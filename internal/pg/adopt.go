package pg

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// A migration snippet is idempotent (IF NOT EXISTS, OR REPLACE), so that the user's
// own migration tool and `sidebox migrate up` may both apply it, in either order. When
// up finds a step's objects already there it records the step as found, after checking
// that each table it would create has the columns the snippet gives it: an unrelated
// table of the same name is refused rather than silently taken over.

var (
	createdRelation = regexp.MustCompile(`(?i)\bCREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)`)
	tableBody       = regexp.MustCompile(`(?is)\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)\s*\((.*?)\n\)(?:\s*PARTITION\s+BY\s[^;]*)?;`)
	columnLine      = regexp.MustCompile(`^\s+([a-z_][a-z0-9_]*)\s+[a-z]`)
)

// relationsCreated lists the tables, indexes and sequences a snippet creates.
func relationsCreated(sql string) []string {
	var out []string
	for _, m := range createdRelation.FindAllStringSubmatch(sql, -1) {
		out = append(out, m[2])
	}
	return out
}

// columnsCreated maps each table a snippet creates to its column names.
func columnsCreated(sql string) map[string][]string {
	out := map[string][]string{}
	for _, m := range tableBody.FindAllStringSubmatch(sql, -1) {
		for line := range strings.SplitSeq(m[2], "\n") {
			c := columnLine.FindStringSubmatch(line)
			if c != nil && !strings.EqualFold(c[1], "constraint") {
				out[m[1]] = append(out[m[1]], c[1])
			}
		}
	}
	return out
}

// alreadyThere reports whether every relation the snippet creates exists already (in
// the transaction's search_path); false for a snippet that creates none.
func alreadyThere(ctx context.Context, tx *sql.Tx, snippet string) (bool, error) {
	rels := relationsCreated(snippet)
	if len(rels) == 0 {
		return false, nil
	}
	for _, r := range rels {
		var ok bool
		if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, r).Scan(&ok); err != nil {
			return false, fmt.Errorf("look up %s: %w", r, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// checkColumns returns an error naming the columns that a table the snippet creates,
// and that exists already, lacks.
func checkColumns(ctx context.Context, tx *sql.Tx, snippet string) error {
	for table, want := range columnsCreated(snippet) {
		var exists bool
		if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
			return fmt.Errorf("look up %s: %w", table, err)
		}
		if !exists {
			continue
		}
		rows, err := tx.QueryContext(ctx, `SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, table)
		if err != nil {
			return fmt.Errorf("read the columns of %s: %w", table, err)
		}
		var have []string
		for rows.Next() {
			var c string
			if err := rows.Scan(&c); err != nil {
				rows.Close()
				return fmt.Errorf("read the columns of %s: %w", table, err)
			}
			have = append(have, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read the columns of %s: %w", table, err)
		}
		var missing []string
		for _, c := range want {
			if !slices.Contains(have, c) {
				missing = append(missing, c)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("table %s exists but lacks column(s) %s: it is not the table this migration makes; rename or drop it, or configure another table name", table, strings.Join(missing, ", "))
		}
	}
	return nil
}
