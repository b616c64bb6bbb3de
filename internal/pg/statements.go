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
	db      *sql.DB
	mode    PrepareMode
	setting string // where the user sets mode, for log messages
	log     *zap.Logger

	off     atomic.Bool // plain queries only
	decided atomic.Bool // the mode is settled (auto: pooling looked up)
	look    sync.Mutex  // one look at the pooling at a time; guards the two below
	failed  int         // looks that could not be made in a row
	next    time.Time   // no look before then, after one that could not be made

	mu    sync.Mutex
	cache map[string]*sql.Stmt
}

// NewStatements returns a Statements for db. setting names where the user sets mode,
// for log messages. A nil log discards messages.
func NewStatements(db *sql.DB, mode PrepareMode, setting string, log *zap.Logger) *Statements {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Statements{db: db, mode: mode, setting: setting, log: log}
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
	for _, q := range qs {
		if s.get(q) != nil {
			continue
		}
		// Not under s.mu: a query of another goroutine, which may hold the pool's
		// last connection in a transaction, must not wait for this one's connection.
		st, err := s.db.PrepareContext(ctx, q)
		if err != nil {
			if lostStatement(err) {
				s.switchOff("cannot prepare statements on the database connection (a pooler?); using plain queries", err)
			}
			return
		}
		s.mu.Lock()
		if _, ok := s.cache[q]; ok || s.off.Load() {
			s.mu.Unlock()
			_ = st.Close()
			continue
		}
		if s.cache == nil {
			s.cache = map[string]*sql.Stmt{}
		}
		s.cache[q] = st
		s.mu.Unlock()
	}
}

// decide looks at the pooling once, in PrepareAuto mode; false while it cannot. A look
// needs three connections of the pool: with fewer free (the application is busy) or
// when the look fails, it is made again later, after a delay that doubles up to
// lookMax, and queries are plain meanwhile. A pool limited to fewer than three
// connections cannot be looked at and uses plain queries: preparing behind a
// transaction pooler would be unsafe.
func (s *Statements) decide(ctx context.Context) bool {
	if s.decided.Load() {
		return true
	}
	s.look.Lock()
	defer s.look.Unlock()
	if s.decided.Load() {
		return true
	}
	if time.Now().Before(s.next) {
		return false
	}
	st := s.db.Stats()
	if st.MaxOpenConnections > 0 && st.MaxOpenConnections < 3 {
		s.off.Store(true)
		s.decided.Store(true)
		s.log.Info("the database pool holds fewer than three connections, too few to look whether it is pooled per transaction: " +
			"using plain queries; set " + s.setting + " to on if it is not")
		return true
	}
	if st.MaxOpenConnections > 0 && st.MaxOpenConnections-st.InUse < 3 {
		s.lookLater()
		return false
	}
	pooled, err := TransactionPooled(ctx, s.db)
	if err != nil {
		s.lookLater()
		return false
	}
	if pooled {
		s.off.Store(true)
		s.log.Info("the database connection is pooled per transaction (PgBouncer in transaction mode?): " +
			"using one-round-trip plain queries instead of prepared statements; set " + s.setting + " to on " +
			"if the pooler keeps prepared statements (PgBouncer 1.21 or later with max_prepared_statements)")
	}
	s.decided.Store(true)
	return true
}

// lookLater puts the next look at the pooling off; s.look is held.
func (s *Statements) lookLater() {
	s.failed++
	s.next = time.Now().Add(min(lookBase<<min(s.failed-1, 16), lookMax))
}

// lookBase and lookMax pace the looks at the pooling that could not be made. lookMax
// is short: a relay started while its database was down claims with plain queries,
// planned at every claim, until its next look.
const (
	lookBase = time.Second
	lookMax  = 10 * time.Second
)

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
	if !s.off.Swap(true) {
		s.log.Warn(msg, zap.String("error", redact.Text(err.Error())),
			zap.String("hint", "set "+s.setting+" to off to skip preparing behind this pooler"))
	}
}

// lostStatement reports whether err says that the server connection lacks a prepared
// statement, or has another one of the same name: what a pooler without
// prepared-statement support causes.
// Any driver's error that tells its SQLSTATE counts (lib/pq's and pgx's do).
func lostStatement(err error) bool {
	pe, ok := errors.AsType[interface {
		error
		SQLState() string
	}](err)
	if !ok {
		return false
	}
	switch pe.SQLState() {
	case "26000", "42P05": // invalid_sql_statement_name, duplicate_prepared_statement
		return true
	case "08P01": // protocol_violation: "bind message supplies 3 parameters, but prepared statement "1" requires 11"
		return strings.Contains(err.Error(), "prepared statement")
	}
	return false
}

// TransactionPooled reports whether db's connections are pooled per transaction (or
// per statement): whether one client connection's statements run on more than one
// server process, or two client connections' on the same one. It takes three
// connections of db for a moment: one holds a transaction while the other two run
// statements. A direct connection and session pooling report false. A pool limited to
// fewer than three connections cannot be looked at and reports false.
func TransactionPooled(ctx context.Context, db *sql.DB) (bool, error) {
	if n := db.Stats().MaxOpenConnections; n > 0 && n < 3 {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conns := make([]*sql.Conn, 3)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			return false, err
		}
		defer c.Close()
		conns[i] = c
	}
	seen := map[int]int{} // backend pid -> client index
	shared := false
	pid := func(i int, q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) error {
		var p int
		if err := q.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&p); err != nil {
			return err
		}
		if j, ok := seen[p]; ok && j != i {
			shared = true
		}
		for other, j := range seen {
			if j == i && other != p {
				shared = true // one client, two server processes
			}
		}
		seen[p] = i
		return nil
	}
	for i := 1; i < 3; i++ {
		if err := pid(i, conns[i]); err != nil {
			return false, err
		}
	}
	if shared {
		return true, nil
	}
	// conns[0] holds a server connection in a transaction; meanwhile the others run
	// again. A pooler (reusing the server connection given back last, or rotating)
	// shows one client on several server processes or several clients on one; with
	// no free server connection it makes them wait for conns[0]'s. A direct
	// connection keeps one backend per client.
	tx, err := conns[0].BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	if err := pid(0, tx); err != nil {
		return false, err
	}
	done := make(chan error, 1)
	go func() {
		for range 3 {
			for i := 1; i < 3; i++ {
				if err := pid(i, conns[i]); err != nil {
					done <- err
					return
				}
			}
		}
		done <- nil
	}()
	t := time.NewTimer(pooledWait)
	defer t.Stop()
	select {
	case err := <-done:
		return shared, err
	case <-t.C:
		// Slow: a pooler with no free server connection makes the others wait for
		// conns[0]'s, and they run on it once it is handed on, which shows; a direct
		// connection that is only slow (a loaded database, a distant one) keeps one
		// backend per client, and preparing is safe.
		_ = tx.Rollback()
		if err := <-done; err != nil {
			return false, err
		}
		return shared, nil
	}
}

// pooledWait is how long TransactionPooled lets a statement wait for a server
// connection before it concludes that a pooler with no free one holds it back.
const pooledWait = 3 * time.Second
