package inbox

import (
	"context"
	"testing"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// Migration 0002 keeps an inbox_unkeyed_idx that an operator built beforehand with
// CREATE INDEX CONCURRENTLY (as its comment suggests for a busy table), and its down
// step removes the index.
func TestUnkeyedIndexMigrationKeepsAConcurrentBuild(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	ctx := context.Background()
	tbl := pg.Table{Name: "inbox"}
	ms := migrations(t)
	first := ms
	first.Steps = ms.Steps[:1]
	if _, err := first.Up(ctx, db, tbl); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE INDEX CONCURRENTLY IF NOT EXISTS inbox_unkeyed_idx ON inbox (consumer, available_at, seq)
		WHERE processed_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL`); err != nil {
		t.Fatal(err)
	}
	var before, after int64
	oid := `SELECT coalesce(to_regclass('inbox_unkeyed_idx')::oid::bigint, 0)`
	if err := db.QueryRow(oid).Scan(&before); err != nil {
		t.Fatal(err)
	}
	applied, err := ms.Up(ctx, db, tbl)
	if err != nil || len(applied) != 1 || applied[0].Version != 2 {
		t.Fatalf("Up after a concurrent build applied %v, %v; want migration 2", applied, err)
	}
	if err := db.QueryRow(oid).Scan(&after); err != nil || after != before {
		t.Errorf("inbox_unkeyed_idx was rebuilt (oid %d, then %d, %v)", before, after, err)
	}
	second := ms
	second.Steps = ms.Steps[1:2]
	if _, err := second.Down(ctx, db, tbl); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(oid).Scan(&after); err != nil || after != 0 {
		t.Errorf("inbox_unkeyed_idx is still there after migration 2's down step (%v)", err)
	}
}
