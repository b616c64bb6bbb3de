// Package inbox is the receiving side of sidebox: it turns at-least-once delivery with a
// stable message_id into exactly-once effect on the receiving service.
//
// Every message a consumer has seen is one row of the inbox table, keyed by
// (consumer, message_id). There are two ways to fill it:
//
//   - The sidecar's Consumer reads a RabbitMQ queue and stores each delivery as an
//     unprocessed row, acknowledging it only after the row committed. A Processor (or
//     plain SQL, see docs/inbox.md) then processes the rows in the service's own
//     transactions, marking each row processed in the same transaction as its effect.
//   - A Go service that consumes RabbitMQ itself calls Claim inside the transaction that
//     applies a message's effect; Claim reports whether the message is new.
//
// Processed rows are removed after a retention window by the Purger; a duplicate that
// arrives after its row was purged is not recognised.
package inbox

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"unicode/utf8"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// DefaultTable is the inbox table's default name.
const DefaultTable = "inbox"

// MigrationFiles returns the inbox table's SQL snippet files, NNNN_name.up.sql and
// NNNN_name.down.sql, written for the table named "inbox", for a migration tool of the
// service's own. `sidebox migrate print` prints them.
func MigrationFiles() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(fmt.Sprintf("embedded inbox migrations are broken: %v", err)) // a build defect, caught by tests
	}
	return sub
}

// Migrate creates or updates the inbox table named table ("name" or "schema.name",
// default "inbox" when empty), creating its schema when missing: it applies the
// migrations not yet recorded for it in the schema's sidebox_migrations ledger, oldest
// first, each in its own transaction. It is what `sidebox migrate up` does for the
// inbox; concurrent callers wait for each other.
func Migrate(ctx context.Context, db *sql.DB, table string) error {
	t, err := pg.ParseTable(cmp.Or(table, DefaultTable))
	if err != nil {
		return fmt.Errorf("inbox table: %w", err)
	}
	return inboxdb.Migrate(ctx, db, MigrationFiles(), t)
}

// Execer is what Claim needs: a *sql.Tx, or a *sql.Conn inside a transaction.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// ErrNoMessageID is returned by Claim for an empty message id.
var ErrNoMessageID = errors.New("inbox: message has no message_id")

// ErrInvalidMessageID is returned by Claim for a message id that PostgreSQL text cannot
// hold: not valid UTF-8, or containing U+0000.
var ErrInvalidMessageID = errors.New("inbox: message_id is not valid UTF-8 or contains NUL")

// Claimer records message ids in one inbox table.
type Claimer struct {
	insert string
}

// NewClaimer returns a Claimer for table, "inbox" or "schema.name".
func NewClaimer(table string) (*Claimer, error) {
	t, err := pg.ParseTable(table)
	if err != nil {
		return nil, fmt.Errorf("inbox table: %w", err)
	}
	return &Claimer{insert: inboxdb.ClaimSQL(t.String())}, nil
}

// Claim records messageID for consumer in the "inbox" table through tx, the transaction
// that applies the message's effect. It reports first = true when the id was new; false
// means the message was already handled (or is being handled by a transaction that
// commits first): skip the effect and acknowledge the delivery.
//
// The row is written as processed, so it is purged after the retention window. A
// concurrent transaction claiming the same id waits for this one and then gets false,
// or true if this one rolled back. An id that is not valid UTF-8 or contains NUL is
// refused with ErrInvalidMessageID before any SQL is sent, so tx stays usable.
func Claim(ctx context.Context, tx Execer, consumer, messageID string) (first bool, err error) {
	c := Claimer{insert: `INSERT INTO ` + DefaultTable + inboxdb.ClaimValues} // a constant: nothing built per call
	return c.Claim(ctx, tx, consumer, messageID)
}

// Claim is the package-level Claim for this Claimer's table. An id or consumer name that
// PostgreSQL text cannot hold (invalid UTF-8, NUL) is refused with an error before any SQL
// is sent, leaving tx usable; for the id the error wraps ErrInvalidMessageID.
func (c *Claimer) Claim(ctx context.Context, tx Execer, consumer, messageID string) (first bool, err error) {
	switch checkMessageID(messageID) {
	case RejectNoMessageID:
		return false, ErrNoMessageID
	case RejectInvalidMessageID:
		// Refused before any SQL: a failed statement would abort the caller's transaction.
		return false, fmt.Errorf("claim inbox message %q: %w", pg.Text(messageID), ErrInvalidMessageID)
	}
	if !utf8.ValidString(consumer) || strings.ContainsRune(consumer, 0) {
		return false, fmt.Errorf("claim inbox message %q: consumer name %q is not valid UTF-8 or contains NUL", messageID, pg.Text(consumer))
	}
	res, err := tx.ExecContext(ctx, c.insert, consumer, messageID)
	if err != nil {
		return false, fmt.Errorf("claim inbox message %q: %w", messageID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("claim inbox message %q: %w", messageID, err)
	}
	return n == 1, nil
}
