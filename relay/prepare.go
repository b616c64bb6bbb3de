package relay

import (
	"context"
	"database/sql"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/pg"
)

// statements runs the relay's frequent queries through the shared pooler-safe
// statement layer (pg.Statements): the claim is planned once per connection where
// preparing is safe, and sent as one plain Parse/Bind/Execute behind a transaction
// pooler.
type statements struct{ *pg.Statements }

func newStatements(db *sql.DB, mode pg.PrepareMode, log *zap.Logger) *statements {
	return &statements{pg.NewStatements(db, mode, log)}
}

// query runs q with args in tx, as a prepared statement when q has been prepared.
func (s *statements) query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	return s.Query(ctx, tx, q, args...)
}

// prepare prepares the queries not prepared yet; never while holding a transaction.
func (s *statements) prepare(ctx context.Context, qs ...string) { s.Prepare(ctx, qs...) }

// ready reports whether every query in qs is prepared (or preparing is off).
func (s *statements) ready(qs ...string) bool { return s.Ready(qs...) }

// close releases the prepared statements.
func (s *statements) close() { s.Close() }
