package pg

import (
	"context"
	"database/sql"
	"fmt"
)

// InReadOnlyTx runs fn in one read-only REPEATABLE READ transaction, so that every
// number of a report comes from the same snapshot, after checking that t exists in it.
// It reports found = false when t does not exist.
func InReadOnlyTx(ctx context.Context, db *sql.DB, t Table, fn func(*sql.Tx) error) (found bool, err error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return false, fmt.Errorf("begin read-only transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.String()).Scan(&found); err != nil {
		return false, fmt.Errorf("look up table %s: %w", t, err)
	}
	if !found {
		return false, nil
	}
	// A state query is over the whole table: its estimated cost grows with the
	// backlog, and JIT-compiling it would add the better part of a second.
	if _, err := tx.ExecContext(ctx, `SET LOCAL jit = off`); err != nil {
		return false, fmt.Errorf("read-only transaction: %w", err)
	}
	return true, fn(tx)
}
