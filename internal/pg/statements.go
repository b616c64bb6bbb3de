package pg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/redact"
)

// PrepareMode says whether Statements prepares its queries on the server.
type PrepareMode string

// The prepare modes.
const (
	// PrepareAuto prepares unless the connection is pooled per transaction (PgBouncer
	// in transaction mode), where a prepared statement may be missing on, or belong to
	// another client of, the server connection a later transaction runs on.
	PrepareAuto PrepareMode = "auto"
	// PrepareOn always prepares: for a direct connection, session pooling, or a pooler
	// that keeps prepared statements across its server connections (PgBouncer 1.21 and
	// later with max_prepared_statements above 0).
	PrepareOn PrepareMode = "on"
	// PrepareOff never prepares: every query is sent as one Parse/Bind/Execute.
	PrepareOff PrepareMode = "off"
)

// ParsePrepareMode validates s; "" is PrepareAuto.
func ParsePrepareMode(s string) (PrepareMode, error) {
	switch m := PrepareMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return PrepareAuto, nil
	case PrepareAuto, PrepareOn, PrepareOff:
		return m, nil
	}
	return "", fmt.Errorf("must be auto, on or off, got %q", s)
}

// ErrPreparedLost marks a failed execution of a prepared statement that the server
// connection did not have (a pooler without prepared-statement support). Statements
// has switched to plain queries by then: the caller may retry at once, in a new
// transaction if the failed one was in a transaction.
var ErrPreparedLost = errors.New("prepared statement lost by the database connection")

// Statements runs frequent queries as prepared statements when that is safe: planned
// once per connection instead of once per execution. It is safe to use from several
// goroutines.
//
// Behind a pooler, named prepared statements are only safe when the pooler keeps them:
// PgBouncer before 1.21 (and later versions with max_prepared_statements = 0) runs a
// client's transactions on any of its server connections, where the statement is
// missing (error 26000), already exists under that name for another client (42P05), or
// is another client's statement of the same name. In PrepareAuto mode Statements looks
// whether the connection is pooled per transaction before it prepares anything, and
// uses plain queries if so. Should a prepared execution still fail that way, it
// switches to plain queries for good and says so once.
//
// Plain queries with arguments are pooler-safe only as one Parse/Bind/Execute/Sync:
// open the database with lib/pq's binary_parameters=yes.
type Statements struct {
	db   *sql.DB
	mode PrepareMode
	log  *zap.Logger

	off     atomic.Bool // plain queries only
	decided atomic.Bool // the mode is settled (auto: pooling looked up)
	look    sync.Mutex  // one look at the pooling at a time

	mu    sync.Mutex
	cache map[string]*sql.Stmt
}

// NewStatements returns a Statements for db. A nil log discards messages.
func NewStatements(db *sql.DB, mode PrepareMode, log *zap.Logger) *Statements {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Statements{db: db, mode: mode, log: log}
	switch mode {
	case PrepareOff:
		s.off.Store(true)
		s.decided.Store(true)
	case PrepareOn:
		s.decided.Store(true)
	}
	return s
}

// Prepared reports whether queries are prepared (false once plain queries are used for
// good, and in PrepareAuto mode until pooling has been looked up).
func (s *Statements) Prepared() bool { return s.decided.Load() && !s.off.Load() }

// Query runs q with args, in tx when tx is not nil, as a prepared statement when q has
// been prepared. An error of a prepared execution that the connection did not have
// wraps ErrPreparedLost.
func (s *Statements) Query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	st := s.get(q)
	if st == nil {
		if tx != nil {
			return tx.QueryContext(ctx, q, args...)
		}
		return s.db.QueryContext(ctx, q, args...)
	}
	if tx != nil {
		st = tx.StmtContext(ctx, st)
	}
	rows, err := st.QueryContext(ctx, args...)
	if err != nil && lostStatement(err) {
		s.switchOff("a prepared statement was missing on the database connection (a pooler without prepared-statement support?); using plain queries from now on", err)
		return nil, fmt.Errorf("%w: %w", ErrPreparedLost, err)
	}
	return rows, err
}

// Prepare prepares the queries not prepared yet; in PrepareAuto mode it first looks
// whether the connection is pooled per transaction. It needs connections of its own,
// so it must not be called while the caller holds a transaction (with a small pool
// it would wait for itself). A failure is left for the next call.
func (s *Statements) Prepare(ctx context.Context, qs ...string) {
	if !s.decide(ctx) || s.off.Load() {
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
			if lostStatement(err) {
				s.switchOffLocked("cannot prepare statements on the database connection (a pooler?); using plain queries", err)
			}
			return
		}
		if s.cache == nil {
			s.cache = map[string]*sql.Stmt{}
		}
		s.cache[q] = st
	}
}

// decide looks at the pooling once, in PrepareAuto mode; false while it cannot.
func (s *Statements) decide(ctx context.Context) bool {
	if s.decided.Load() {
		return true
	}
	s.look.Lock()
	defer s.look.Unlock()
	if s.decided.Load() {
		return true
	}
	pooled, err := TransactionPooled(ctx, s.db)
	if err != nil {
		return false
	}
	if pooled {
		s.off.Store(true)
		s.log.Info("the database connection is pooled per transaction (PgBouncer in transaction mode?): " +
			"using one-round-trip plain queries instead of prepared statements; set SIDEBOX_DATABASE_PREPARE=on " +
			"if the pooler keeps prepared statements (PgBouncer 1.21 or later with max_prepared_statements)")
	}
	s.decided.Store(true)
	return true
}

// Ready reports whether every query in qs is prepared, or preparing is off.
func (s *Statements) Ready(qs ...string) bool {
	if !s.decided.Load() {
		return false
	}
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

// Close releases the prepared statements.
func (s *Statements) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, st := range s.cache {
		_ = st.Close()
		delete(s.cache, q)
	}
}

func (s *Statements) get(q string) *sql.Stmt {
	if s.off.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache[q]
}

func (s *Statements) switchOff(msg string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.switchOffLocked(msg, err)
}

func (s *Statements) switchOffLocked(msg string, err error) {
	if !s.off.Swap(true) {
		s.log.Warn(msg, zap.String("error", redact.Text(err.Error())),
			zap.String("hint", "set SIDEBOX_DATABASE_PREPARE=off to skip preparing behind this pooler"))
	}
}

// lostStatement reports whether err says that the server connection lacks a prepared
// statement, or has another one of the same name: what a pooler without
// prepared-statement support causes.
func lostStatement(err error) bool {
	pe, ok := errors.AsType[*pq.Error](err)
	if !ok {
		return false
	}
	switch pe.Code {
	case "26000", "42P05": // invalid_sql_statement_name, duplicate_prepared_statement
		return true
	case "08P01": // protocol_violation: "bind message supplies 3 parameters, but prepared statement "1" requires 11"
		return strings.Contains(pe.Message, "prepared statement")
	}
	return false
}

// TransactionPooled reports whether db's connections are pooled per transaction (or
// per statement): whether one client connection's statements run on more than one
// server process. It takes two connections of db for a moment. A direct connection
// and session pooling report false. A pool limited to one connection cannot be
// looked at and reports false.
func TransactionPooled(ctx context.Context, db *sql.DB) (bool, error) {
	if db.Stats().MaxOpenConnections == 1 {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c1, err := db.Conn(ctx)
	if err != nil {
		return false, err
	}
	defer c1.Close()
	c2, err := db.Conn(ctx)
	if err != nil {
		return false, err
	}
	defer c2.Close()
	pid := func(c *sql.Conn) (int, error) {
		var p int
		err := c.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&p)
		return p, err
	}
	before, err := pid(c2)
	if err != nil {
		return false, err
	}
	// c1 holds a server connection in a transaction. A pooler hands c1 the server
	// connection c2 just gave back (PgBouncer reuses the last one first), or c2 gets
	// another one for its next statement; a direct connection keeps its own backend.
	tx, err := c1.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	var held int
	if err := tx.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&held); err != nil {
		return false, err
	}
	after, err := pid(c2)
	if err != nil {
		return false, err
	}
	return held == before || after != before, nil
}
