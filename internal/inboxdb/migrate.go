package inboxdb

import (
	"context"
	"database/sql"
	"io/fs"

	"github.com/sidebox/sidebox/internal/pg"
)

// Base is the table name the inbox migration snippets are written for; they are
// rewritten for the configured table (pg.Migrations.Rewrite).
const Base = "inbox"

// Migrations reads the inbox table's migration snippets from fsys, the files that
// inbox.MigrationFiles embeds.
func Migrations(fsys fs.FS) (pg.Migrations, error) { return pg.LoadTableMigrations(fsys, Base) }

// Migrate applies the migrations in fsys not yet recorded for the inbox table t.
func Migrate(ctx context.Context, db *sql.DB, fsys fs.FS, t pg.Table) error {
	return pg.MigrateTable(ctx, db, fsys, Base, t)
}

// Held counts the rows not yet processed (dead ones included), which exist nowhere
// else: rolling the table back would lose them. It returns 0 when t does not exist.
func Held(ctx context.Context, db *sql.DB, t pg.Table) (int64, error) {
	return pg.CountRows(ctx, db, t, `processed_at IS NULL`)
}
