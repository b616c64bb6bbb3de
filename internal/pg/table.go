// Package pg holds the PostgreSQL plumbing shared by the relay, the inbox and the CLI:
// validated table names, the migration runner and connection helpers.
package pg

import (
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
)

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Table is a validated, optionally schema-qualified table name. Both parts are
// lower-case unquoted SQL identifiers, so they never need quoting and never fold case.
type Table struct {
	Schema string // empty: the connection's search_path decides
	Name   string
}

// ParseTable validates s as `name` or `schema.name`.
func ParseTable(s string) (Table, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return Table{}, fmt.Errorf("%q has more than one dot; want name or schema.name", s)
	}
	for _, p := range parts {
		if !identifier.MatchString(p) {
			return Table{}, fmt.Errorf("%q is not a lower-case SQL identifier (letters a-z, digits and _, not starting with a digit, at most 63 characters)", p)
		}
	}
	if len(parts) == 2 {
		return Table{Schema: parts[0], Name: parts[1]}, nil
	}
	return Table{Name: parts[0]}, nil
}

// MustParseTable is ParseTable for constants in tests and examples; it panics on error.
func MustParseTable(s string) Table {
	t, err := ParseTable(s)
	if err != nil {
		panic(err)
	}
	return t
}

// String returns the name as written in SQL: name or schema.name.
func (t Table) String() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

// Ident returns a name derived from the table's (an index, a sequence), qualified with
// the table's schema: Ident("_wakeup") of app.outbox is app.outbox_wakeup.
func (t Table) Ident(suffix string) string {
	return Table{Schema: t.Schema, Name: t.Name + suffix}.String()
}

// Channel is the LISTEN/NOTIFY channel on which writers wake the relay of this table:
// sidebox_<name>, or sidebox_<schema>.<name> for a schema-qualified table, so that
// tables of the same name in two schemas (a.outbox, b.outbox) do not wake each other's
// relays. The dot cannot occur in an identifier, so no two tables share a channel. A
// channel name longer than PostgreSQL allows (63 bytes; pg_notify refuses a longer one
// and LISTEN would truncate it) is sidebox_ and a hash of the table's name instead.
func (t Table) Channel() string {
	ch := "sidebox_" + t.String()
	if len(ch) > maxChannel {
		h := fnv.New64a()
		h.Write([]byte(t.String()))
		ch = fmt.Sprintf("sidebox_%016x", h.Sum64())
	}
	return ch
}

// maxChannel is the longest channel name PostgreSQL takes (NAMEDATALEN - 1).
const maxChannel = 63
