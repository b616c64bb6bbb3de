package relay

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

// Stopping the relay lets the batches in flight finish: every row that left the outbox
// arrived, nothing arrived twice, and a new relay publishes the rest.
func TestStopFinishesBatchesInFlight(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	const n = 6000
	ids := backlog(t, db, table, exchange, "k", n)

	r := startRelay(t, db, dsn, url, testConfig(table))
	s.waitDistinct(t, 500, 20*time.Second)
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v, want nil", err)
	}
	left := map[string]bool{}
	rows, err := db.Query(`SELECT id::text FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		left[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(left) == 0 {
		t.Fatal("the relay drained everything before it was stopped; the test proves nothing")
	}
	published := n - len(left)
	s.waitDistinct(t, published, 10*time.Second) // deliveries confirmed before the stop
	for _, id := range ids {
		if !left[id] && s.count(id) == 0 {
			t.Fatalf("row %s left the outbox but its message never arrived", id)
		}
	}
	t.Logf("stopped after %d of %d rows", published, n)

	startRelay(t, db, dsn, url, testConfig(table))
	s.waitDistinct(t, n, 30*time.Second)
	if dup := s.total() - n; dup != 0 {
		t.Errorf("%d duplicates: a clean stop must confirm and settle what it published", dup)
	}
}

// Environment of TestHelperRelayProcess.
const (
	helperEnv       = "SIDEBOX_RELAY_TEST_HELPER"
	helperDSN       = "SIDEBOX_RELAY_TEST_DSN"
	helperAMQP      = "SIDEBOX_RELAY_TEST_AMQP"
	helperBatchSize = "SIDEBOX_RELAY_TEST_BATCH_SIZE"
	helperWorkers   = "SIDEBOX_RELAY_TEST_WORKERS"
)

// TestHelperRelayProcess is the relay process of TestRelaySurvivesSIGKILL: it runs only
// when that test starts it (helperEnv set), relays until SIGTERM and exits 0 after a
// clean drain. Run on its own it does nothing.
func TestHelperRelayProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	db, err := sql.Open("postgres", os.Getenv(helperDSN))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log, err := zap.NewDevelopment(zap.IncreaseLevel(zap.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New([]string{os.Getenv(helperAMQP)}, broker.Config{Name: "sidebox-relay-helper", Backoff: fastBackoff()}, log, nil)
	bctx, bcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(bctx) })
	defer func() { bcancel(); wg.Wait() }()

	cfg := testConfig(pg.MustParseTable("outbox"))
	cfg.BatchSize, _ = strconv.Atoi(os.Getenv(helperBatchSize))
	cfg.Workers, _ = strconv.Atoi(os.Getenv(helperWorkers))
	cfg.ListenDatabaseURL = os.Getenv(helperDSN)
	r, err := New(db, cfg, WithConnection(b), WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// The relay process is killed with SIGKILL five times while it drains 20,000 rows:
// every message arrives, and the duplicates are no more than what was in flight at the
// kills. A final SIGTERM ends the last process with exit status 0.
func TestRelaySurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")
	const n, kills, batchSize, workers = 20000, 5, 250, 2
	ids := backlog(t, db, table, exchange, "k", n)

	start := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelayProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"=1", helperDSN+"="+dsn, helperAMQP+"="+url,
			helperBatchSize+"="+strconv.Itoa(batchSize), helperWorkers+"="+strconv.Itoa(workers))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}
	remaining := func() int { return outboxCount(t, db, table, "") }

	for i := range kills {
		before := remaining()
		cmd, out := start()
		// Kill it in the middle of the drain: once it has settled a few batches.
		testenv.Eventually(t, 30*time.Second, "progress of relay process "+strconv.Itoa(i), func() bool {
			return remaining() <= before-3*batchSize
		})
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if remaining() == 0 {
			t.Fatalf("the outbox was drained before kill %d; output:\n%s", i+1, out)
		}
	}
	t.Logf("%d rows left after %d kills, %d deliveries so far", remaining(), kills, s.total())

	cmd, out := start()
	testenv.Eventually(t, 60*time.Second, "the outbox to drain", func() bool { return remaining() == 0 })
	s.waitDistinct(t, n, 30*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Errorf("relay process exited with %d after SIGTERM, want 0; output:\n%s", exit.ExitCode(), out)
		} else {
			t.Error(err)
		}
	}

	for _, id := range ids {
		if s.count(id) == 0 {
			t.Fatalf("message %s was lost", id)
		}
	}
	dup := s.total() - n
	bound := kills * workers * batchSize // at most the rows in flight at each kill
	t.Logf("%d duplicates after %d kills (bound %d)", dup, kills, bound)
	if dup > bound {
		t.Errorf("%d duplicates, more than the %d rows that can be in flight at %d kills", dup, bound, kills)
	}
}

// writer inserts rows one per transaction until stopped, retrying through database
// outages, and remembers the IDs whose commit succeeded.
type writer struct {
	mu   sync.Mutex
	ids  []string
	stop context.CancelFunc
	done chan struct{}
}

func startWriter(t *testing.T, db *sql.DB, table pg.Table, exchange string, every time.Duration, max int) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{stop: cancel, done: make(chan struct{})}
	t.Cleanup(func() { cancel(); <-w.done })
	go func() {
		defer close(w.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; i < max; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var id string
			err := db.QueryRowContext(ctx, `INSERT INTO `+table.String()+` (exchange, routing_key, payload) VALUES ($1, 'k', $2) RETURNING id::text`,
				exchange, []byte(fmt.Sprint("row ", i))).Scan(&id)
			if err != nil {
				continue // the database is away; that row was not written
			}
			w.mu.Lock()
			w.ids = append(w.ids, id)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) written() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ids...)
}

func (w *writer) wait() { <-w.done }

// The broker is restarted while rows are being written and published: nothing is lost,
// no attempt is burnt while it is away, readiness follows it, and the relay goes on.
func TestBrokerRestartMidStream(t *testing.T) {
	t.Parallel()
	rmq := testenv.StartRabbitMQ(t)
	db, dsn, table := outboxDB(t)
	exchange, queue := topology(t, rmq.URL(), "k")
	s := consume(t, rmq.URL(), queue)

	r := startRelay(t, db, dsn, rmq.URL(), testConfig(table))
	w := startWriter(t, db, table, exchange, 2*time.Millisecond, 4000)
	s.waitDistinct(t, 300, 30*time.Second)
	testenv.Eventually(t, 5*time.Second, "readiness", r.Ready)

	rmq.Stop(t)
	testenv.Eventually(t, 10*time.Second, "readiness to drop", func() bool { return !r.Ready() })
	// Rows pile up while the broker is away, and none of them is charged an attempt.
	piled := outboxCount(t, db, table, "")
	testenv.Eventually(t, 10*time.Second, "rows to pile up", func() bool { return outboxCount(t, db, table, "") > piled+100 })
	if n := outboxCount(t, db, table, "attempts > 0"); n != 0 {
		t.Errorf("%d rows were charged an attempt while the broker was away", n)
	}
	rmq.Start(t)

	w.wait()
	want := w.written()
	testenv.Eventually(t, 60*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	s.waitDistinct(t, len(want), 30*time.Second)
	for _, id := range want {
		if s.count(id) == 0 {
			t.Fatalf("message %s was lost", id)
		}
	}
	if !r.Ready() {
		t.Error("not ready after the broker came back")
	}
	for name, c := range map[string]float64{
		"returned": counter(t, r.metrics.Returned, table), "nacked": counter(t, r.metrics.Nacked, table), "dead": counter(t, r.metrics.DeadTotal, table),
	} {
		if c != 0 {
			t.Errorf("%s_total = %v, want 0", name, c)
		}
	}
	t.Logf("%d rows written, %d deliveries (%d duplicates)", len(want), s.total(), s.total()-len(want))
}

// The database is restarted while rows are being written and published: nothing is
// lost, readiness follows it, and the relay keeps running.
func TestDatabaseRestartMidStream(t *testing.T) {
	t.Parallel()
	pgsrv := testenv.StartPostgres(t)
	dsn := pgsrv.URL()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	table := pg.MustParseTable("outbox")
	migrate(t, db, table)
	url := testenv.AMQPURL(t)
	exchange, queue := topology(t, url, "k")
	s := consume(t, url, queue)

	cfg := testConfig(table)
	r := startRelay(t, db, dsn, url, cfg)
	w := startWriter(t, db, table, exchange, 2*time.Millisecond, 3000)
	s.waitDistinct(t, 300, 30*time.Second)
	testenv.Eventually(t, 5*time.Second, "readiness", r.Ready)

	pgsrv.Stop(t)
	testenv.Eventually(t, 10*time.Second, "readiness to drop", func() bool { return !r.Ready() })
	pgsrv.Start(t)
	testenv.Eventually(t, 20*time.Second, "readiness after the restart", r.Ready)

	w.wait()
	want := w.written()
	testenv.Eventually(t, 60*time.Second, "the outbox to drain", func() bool { return outboxCount(t, db, table, "") == 0 })
	s.waitDistinct(t, len(want), 30*time.Second)
	for _, id := range want {
		if s.count(id) == 0 {
			t.Fatalf("message %s was lost", id)
		}
	}
	select {
	case <-r.exited:
		t.Fatal("Run returned during the database outage")
	default:
	}
	// Notifications work again after the LISTEN connection came back (waitIdle waits
	// for the Listener, which may reconnect only after the relay drained).
	waitIdle(t, db, r)
	before := s.total()
	insertRow(t, db, table, exchange, "k", "after restart", nil)
	testenv.Eventually(t, time.Duration(cfg.PollInterval)/2, "a message written after the restart", func() bool { return s.total() > before })
	t.Logf("%d rows written, %d deliveries (%d duplicates)", len(want), s.total(), s.total()-len(want))
}
