package bench

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/relay"
)

// stmtCounter counts what a *sql.DB sends to PostgreSQL: every statement (query, exec,
// prepare, ping) by its normalised text, every new connection, and every transaction
// begun. It sits between
// database/sql and lib/pq (a driver.Connector wrapper), so it sees exactly the round trips
// of the pool it wraps and nothing else.
type stmtCounter struct {
	mu    sync.Mutex
	stmts map[string]int
	txs   int
	short map[string]string // statement text → its key in stmts (normalising is not free)

	// timed, when set, is told how long each query took, from sending it until its
	// rows were read and closed.
	timed func(query string, start time.Time, took time.Duration)
}

// countingPool is env.sidecarPool with a stmtCounter between database/sql and lib/pq.
func (e *env) countingPool() (*sql.DB, *stmtCounter) {
	e.tb.Helper()
	inner, err := pq.NewConnector(e.dbURL)
	if err != nil {
		e.tb.Fatalf("lib/pq connector: %v", err)
	}
	c := &stmtCounter{stmts: map[string]int{}, short: map[string]string{}}
	db := sql.OpenDB(countingConnector{inner: inner, c: c})
	pg.TunePool(db, pg.SidecarIdleConns(relay.DefaultWorkers, inbox.DefaultWorkers)) // as sidecarPool
	e.tb.Cleanup(func() { _ = db.Close() })
	return db, c
}

var blanks = regexp.MustCompile(`\s+`)

// newConnection is the key under which a stmtCounter counts new connections.
const newConnection = "(new connection)"

func (c *stmtCounter) stmt(query string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q, ok := c.short[query]
	if !ok {
		q = blanks.ReplaceAllString(strings.TrimSpace(query), " ")
		if len(q) > 70 {
			q = q[:70] + "..."
		}
		c.short[query] = q
	}
	c.stmts[q]++
}

func (c *stmtCounter) tx() {
	c.mu.Lock()
	c.txs++
	c.mu.Unlock()
}

// counts is a snapshot of a stmtCounter.
type counts struct {
	stmts map[string]int
	txs   int
}

func (c *stmtCounter) snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := counts{stmts: make(map[string]int, len(c.stmts)), txs: c.txs}
	for k, v := range c.stmts {
		s.stmts[k] = v
	}
	return s
}

// sub returns what happened between before and s.
func (s counts) sub(before counts) counts {
	d := counts{stmts: map[string]int{}, txs: s.txs - before.txs}
	for k, v := range s.stmts {
		if n := v - before.stmts[k]; n > 0 {
			d.stmts[k] = n
		}
	}
	return d
}

// total is the number of statements, new connections not included.
func (s counts) total() int {
	n := 0
	for k, v := range s.stmts {
		if k != newConnection {
			n += v
		}
	}
	return n
}

// detail lists the statements under the last note of r, most frequent first.
func (s counts) detail(r *report) {
	keys := make([]string, 0, len(s.stmts))
	for k := range s.stmts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if s.stmts[keys[i]] != s.stmts[keys[j]] {
			return s.stmts[keys[i]] > s.stmts[keys[j]]
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		r.detail("%d × `%s`", s.stmts[k], k)
	}
}

type countingConnector struct {
	inner driver.Connector
	c     *stmtCounter
}

func (cc countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cc.c.stmt(newConnection)
	conn, err := cc.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, c: cc.c}, nil
}

func (cc countingConnector) Driver() driver.Driver { return cc.inner.Driver() }

// countingConn passes every call through to lib/pq's connection, counting it. It offers
// the optional interfaces lib/pq implements and returns driver.ErrSkip for one the inner
// connection lacks, so database/sql takes the same path as without the wrapper.
type countingConn struct {
	driver.Conn
	c *stmtCounter
}

func (cn *countingConn) Prepare(query string) (driver.Stmt, error) {
	return cn.PrepareContext(context.Background(), query)
}

func (cn *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	cn.c.stmt("(prepare) " + query)
	var st driver.Stmt
	var err error
	if p, ok := cn.Conn.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = cn.Conn.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &countingStmt{Stmt: st, query: "(prepared) " + query, c: cn.c}, nil
}

func (cn *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	b, ok := cn.Conn.(driver.ConnBeginTx)
	if !ok {
		return nil, fmt.Errorf("counting driver: %T has no BeginTx", cn.Conn)
	}
	cn.c.tx()
	return b.BeginTx(ctx, opts)
}

func (cn *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := cn.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	cn.c.stmt(query)
	return cn.c.time(query, func() (driver.Rows, error) { return q.QueryContext(ctx, query, args) })
}

// time runs query through run and, when timing, wraps its rows to report at Close.
func (c *stmtCounter) time(query string, run func() (driver.Rows, error)) (driver.Rows, error) {
	if c.timed == nil {
		return run()
	}
	start := time.Now()
	rows, err := run()
	if err != nil {
		return nil, err
	}
	return &timedRows{Rows: rows, done: func() { c.timed(query, start, time.Since(start)) }}, nil
}

// timedRows calls done when closed.
type timedRows struct {
	driver.Rows
	done func()
}

func (r *timedRows) Close() error {
	err := r.Rows.Close()
	if r.done != nil {
		r.done()
		r.done = nil
	}
	return err
}

func (cn *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := cn.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	cn.c.stmt(query)
	return e.ExecContext(ctx, query, args)
}

func (cn *countingConn) Ping(ctx context.Context) error {
	p, ok := cn.Conn.(driver.Pinger)
	if !ok {
		return nil
	}
	cn.c.stmt("(ping)")
	return p.Ping(ctx)
}

func (cn *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := cn.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (cn *countingConn) IsValid() bool {
	if v, ok := cn.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (cn *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := cn.Conn.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// countingStmt counts the executions of a prepared statement.
type countingStmt struct {
	driver.Stmt
	query string
	c     *stmtCounter
}

func (st *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	e, ok := st.Stmt.(driver.StmtExecContext)
	if !ok {
		return nil, fmt.Errorf("counting driver: %T has no ExecContext", st.Stmt)
	}
	st.c.stmt(st.query)
	return e.ExecContext(ctx, args)
}

func (st *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := st.Stmt.(driver.StmtQueryContext)
	if !ok {
		return nil, fmt.Errorf("counting driver: %T has no QueryContext", st.Stmt)
	}
	st.c.stmt(st.query)
	return st.c.time(st.query, func() (driver.Rows, error) { return q.QueryContext(ctx, args) })
}
