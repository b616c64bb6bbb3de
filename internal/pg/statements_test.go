package pg_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

func TestParsePrepareMode(t *testing.T) {
	for in, want := range map[string]pg.PrepareMode{"": pg.PrepareAuto, "auto": pg.PrepareAuto, "ON": pg.PrepareOn, " off ": pg.PrepareOff} {
		if got, err := pg.ParsePrepareMode(in); err != nil || got != want {
			t.Errorf("ParsePrepareMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := pg.ParsePrepareMode("yes"); err == nil {
		t.Error("ParsePrepareMode(yes) succeeded")
	}
}

// Pooling per transaction is found behind PgBouncer in transaction mode, and only there.
func TestTransactionPooled(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	for name, c := range map[string]struct {
		dsn  string
		want bool
	}{
		"direct":      {direct, false},
		"transaction": {testenv.StartPgBouncer(t, direct, testenv.PoolTransaction).URL(direct), true},
		"session":     {testenv.StartPgBouncer(t, direct, testenv.PoolSession).URL(direct), false},
	} {
		db, err := sql.Open("postgres", c.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for range 3 { // the same verdict every time
			got, err := pg.TransactionPooled(context.Background(), db)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got != c.want {
				t.Errorf("%s: TransactionPooled = %v, want %v", name, got, c.want)
			}
		}
	}
}

// In auto mode nothing is prepared behind a transaction pooler; directly it is.
func TestStatementsAutoMode(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	const q = `SELECT $1::int + 1`
	for name, c := range map[string]struct {
		dsn      string
		prepared bool
	}{
		"direct":      {direct, true},
		"transaction": {testenv.StartPgBouncer(t, direct, testenv.PoolTransaction).URL(direct) + "&binary_parameters=yes", false},
	} {
		db, err := sql.Open("postgres", c.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		st := pg.NewStatements(db, pg.PrepareAuto, "prepare", nil)
		defer st.Close()
		st.Prepare(context.Background(), q)
		if !st.Ready(q) || st.Prepared() != c.prepared {
			t.Errorf("%s: ready %v, prepared %v; want true, %v", name, st.Ready(q), st.Prepared(), c.prepared)
		}
		for i := range 20 {
			if got := one(t, st, q, i); got != i+1 {
				t.Fatalf("%s: %d + 1 = %d", name, i, got)
			}
		}
	}
}

// A prepared statement the server forgot (as behind a pooler without support for
// them) fails once with ErrPreparedLost; from then on plain queries run.
func TestStatementsFallBack(t *testing.T) {
	db, _ := testenv.DB(t)
	db.SetMaxOpenConns(1) // the one connection whose statements are dropped
	const q = `SELECT $1::int + 1`
	st := pg.NewStatements(db, pg.PrepareOn, "prepare", nil)
	defer st.Close()
	st.Prepare(context.Background(), q)
	if !st.Prepared() || one(t, st, q, 1) != 2 {
		t.Fatal("not prepared")
	}
	if _, err := db.Exec(`DEALLOCATE ALL`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Query(context.Background(), nil, q, 1); !errors.Is(err, pg.ErrPreparedLost) {
		t.Fatalf("query of a forgotten statement: %v, want ErrPreparedLost", err)
	}
	if st.Prepared() {
		t.Error("still preparing after the server forgot a statement")
	}
	if got := one(t, st, q, 41); got != 42 {
		t.Errorf("plain query: %d", got)
	}
}

func one(t *testing.T, st *pg.Statements, q string, arg int) int {
	t.Helper()
	rs, err := st.Query(context.Background(), nil, q, arg)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var n int
	if !rs.Next() {
		t.Fatalf("no row: %v", rs.Err())
	}
	if err := rs.Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A pooler with one server connection is found too (the second client waits for it).
func TestTransactionPooledSingleServerConnection(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	b := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction, "default_pool_size = 1")
	db, err := sql.Open("postgres", b.URL(direct))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got, err := pg.TransactionPooled(context.Background(), db)
	if err != nil || !got {
		t.Errorf("TransactionPooled = %v, %v; want true", got, err)
	}
}

// A direct database that is only slow (here 300 ms each way on the network, so that
// the look's statements outlast its 3 s wait for a pooler's server connection) is not
// taken for a pooler: its clients keep their own backends.
func TestTransactionPooledSlowDirectConnection(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	proxy := testenv.Proxy(t, direct)
	db, err := sql.Open("postgres", proxy.URL(direct))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxIdleConns(3)
	ctx := context.Background()
	var conns []*sql.Conn // opened before the network slows down
	for range 3 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.PingContext(ctx); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	proxy.Latency(t, 300*time.Millisecond, 0)
	start := time.Now()
	got, err := pg.TransactionPooled(ctx, db)
	t.Logf("the look took %v", time.Since(start).Round(time.Millisecond))
	if err != nil || got {
		t.Errorf("TransactionPooled = %v, %v; want false", got, err)
	}
}

// A pooler that hands out its server connections in turn is found too.
func TestTransactionPooledRoundRobin(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	b := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction, "server_round_robin = 1")
	db, err := sql.Open("postgres", b.URL(direct))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 3 {
		got, err := pg.TransactionPooled(context.Background(), db)
		if err != nil || !got {
			t.Errorf("TransactionPooled = %v, %v; want true", got, err)
		}
	}
}

// In auto mode a pool limited to fewer than three connections, too small to look at,
// uses plain queries: preparing behind a transaction pooler would not be safe.
func TestStatementsAutoModeSmallPool(t *testing.T) {
	db, _ := testenv.DB(t)
	db.SetMaxOpenConns(2)
	const q = `SELECT $1::int + 1`
	st := pg.NewStatements(db, pg.PrepareAuto, "prepare", nil)
	defer st.Close()
	st.Prepare(context.Background(), q)
	if !st.Ready(q) || st.Prepared() {
		t.Errorf("ready %v, prepared %v; want true, false", st.Ready(q), st.Prepared())
	}
	if got := one(t, st, q, 1); got != 2 {
		t.Errorf("plain query: %d", got)
	}
}

// In auto mode the look at the pooling takes three connections of the pool; while the
// application holds so many that fewer are free, Prepare waits for none of them and
// the queries are plain. Once the pool has room the look is made and the statements
// are prepared.
func TestStatementsAutoModeBusyPool(t *testing.T) {
	db, _ := testenv.DB(t)
	db.SetMaxOpenConns(3)
	ctx := context.Background()
	held, err := db.Conn(ctx) // the application's
	if err != nil {
		t.Fatal(err)
	}
	const q = `SELECT $1::int + 1`
	st := pg.NewStatements(db, pg.PrepareAuto, "prepare", nil)
	defer st.Close()
	for range 3 {
		st.Prepare(ctx, q)
	}
	if n := db.Stats().WaitCount; n != 0 {
		t.Errorf("Prepare waited %d times for a connection of a busy pool", n)
	}
	if st.Ready(q) || st.Prepared() {
		t.Errorf("ready %v, prepared %v with a busy pool; want false, false", st.Ready(q), st.Prepared())
	}
	if got := one(t, st, q, 1); got != 2 {
		t.Errorf("plain query: %d", got)
	}
	_ = held.Close()
	testenv.Eventually(t, 10*time.Second, "the statement to be prepared once the pool has room", func() bool {
		st.Prepare(ctx, q)
		return st.Ready(q) && st.Prepared()
	})
}
