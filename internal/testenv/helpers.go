package testenv

import (
	"context"
	"database/sql"
	"testing"
	"time"
)

// Exec runs q on db and fails the test on error.
func Exec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// Count runs q, a query returning one integer (a count), and returns it.
func Count(t testing.TB, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// Eventually polls cond, a condition on server state or metrics, every 10ms until it
// holds, and fails the test when it still does not after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Migrator creates or updates a table: outbox.Migrate or inbox.Migrate.
type Migrator func(ctx context.Context, db *sql.DB, table string) error

// Migrate runs migrate for each table on db and fails the test on error.
func Migrate(t testing.TB, db *sql.DB, migrate Migrator, tables ...string) {
	t.Helper()
	for _, table := range tables {
		if err := migrate(context.Background(), db, table); err != nil {
			t.Fatalf("migrate %s: %v", table, err)
		}
	}
}

// Migrated is DB with table migrated by migrate: a fresh database and its URL.
func Migrated(t testing.TB, migrate Migrator, table string) (*sql.DB, string) {
	t.Helper()
	db, url := DB(t)
	Migrate(t, db, migrate, table)
	return db, url
}
