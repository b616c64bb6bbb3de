package outboxdb

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"

	"github.com/sidebox/sidebox/internal/pg"
)

// Base is the table name the outbox migration snippets are written for; they are
// rewritten for the configured table (pg.Migrations.Rewrite).
const Base = "outbox"

// Migrations reads the outbox table's migration snippets from fsys, the files that
// outbox.MigrationFiles embeds.
func Migrations(fsys fs.FS) (pg.Migrations, error) {
	ms, err := pg.LoadMigrations(fsys, ".", Base)
	if err != nil {
		return pg.Migrations{}, fmt.Errorf("outbox migrations: %w", err)
	}
	return ms, nil
}

// Migrate applies the migrations in fsys not yet recorded for the outbox table t.
func Migrate(ctx context.Context, db *sql.DB, fsys fs.FS, t pg.Table) error {
	ms, err := Migrations(fsys)
	if err != nil {
		return err
	}
	if _, err := ms.Up(ctx, db, t); err != nil {
		return fmt.Errorf("migrate outbox table %s: %w", t, err)
	}
	return nil
}

// Held counts the unpublished rows (pending, retrying or dead), which exist nowhere
// else: rolling the table back would lose them. It returns 0 when t does not exist.
func Held(ctx context.Context, db *sql.DB, t pg.Table) (int64, error) {
	ok, err := pg.TableExists(ctx, db, t)
	if err != nil || !ok {
		return 0, err
	}
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+t.String()+` WHERE true`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count rows of %s: %w", t, err)
	}
	return n, nil
}
