package relay

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/lib/pq"
	"go.uber.org/zap"
)

// statements runs the relay's frequent queries as prepared statements: the claim is
// planned once per connection instead of once per claim, and runs in one round trip.
// A connection pooler that does not keep prepared statements across its server
// connections (PgBouncer in transaction mode before 1.21, or without
// max_prepared_statements) answers with "prepared statement does not exist"; the relay
// then switches to plain queries for good.
type statements struct {
	db  *sql.DB
	log *zap.Logger
	off atomic.Bool

	mu    sync.Mutex
	cache map[string]*sql.Stmt
}

// query runs q with args in tx, as a prepared statement when q has been prepared.
func (s *statements) query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s.get(q); st != nil {
		rows, err := tx.StmtContext(ctx, st).QueryContext(ctx, args...)
		if pe, ok := errors.AsType[*pq.Error](err); ok && (pe.Code == "26000" || pe.Code == "42P05") {
			if !s.off.Swap(true) {
				s.log.Warn("the database connection does not keep prepared statements (a pooler?); using plain queries", errField(err))
			}
		}
		return rows, err
	}
	return tx.QueryContext(ctx, q, args...)
}

func (s *statements) get(q string) *sql.Stmt {
	if s.off.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache[q]
}

// prepare prepares the queries not prepared yet. It needs a connection of its own, so
// it must not be called while the caller holds a transaction (with a pool of one
// connection it would wait for itself). A failure is left for the next call.
func (s *statements) prepare(ctx context.Context, qs ...string) {
	if s.off.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range qs {
		if _, ok := s.cache[q]; ok {
			continue
		}
		st, err := s.db.PrepareContext(ctx, q)
		if err != nil {
			return
		}
		if s.cache == nil {
			s.cache = map[string]*sql.Stmt{}
		}
		s.cache[q] = st
	}
}

// ready reports whether every query in qs is prepared (or preparing is off).
func (s *statements) ready(qs ...string) bool {
	if s.off.Load() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range qs {
		if _, ok := s.cache[q]; !ok {
			return false
		}
	}
	return true
}

// close releases the prepared statements.
func (s *statements) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, st := range s.cache {
		_ = st.Close()
		delete(s.cache, q)
	}
}
