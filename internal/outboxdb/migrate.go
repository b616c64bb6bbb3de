package outboxdb

import (
	"context"
	"database/sql"
	"io/fs"

	"github.com/sidebox/sidebox/internal/pg"
)

// Base is the table name the outbox migration snippets are written for; they are
// rewritten for the configured table (pg.Migrations.Rewrite).
const Base = "outbox"

// Migrations reads the outbox table's migration snippets from fsys, the files that
// outbox.MigrationFiles embeds.
func Migrations(fsys fs.FS) (pg.Migrations, error) { return pg.LoadTableMigrations(fsys, Base) }

// Migrate applies the migrations in fsys not yet recorded for the outbox table t.
func Migrate(ctx context.Context, db *sql.DB, fsys fs.FS, t pg.Table) error {
	return pg.MigrateTable(ctx, db, fsys, Base, t)
}

// Held counts the unpublished rows (pending, retrying or dead), which exist nowhere
// else: rolling the table back would lose them. Published rows kept for audit do not
// count. It returns 0 when t does not exist.
func Held(ctx context.Context, db *sql.DB, t pg.Table) (int64, error) {
	return pg.CountRows(ctx, db, t, `published_at IS NULL`)
}
