package inbox

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/internal/testenv"
)

// store inserts rows as the sidecar would, in arrival order: id or id:orderingKey.
func storeRows(t *testing.T, db *sql.DB, consumer string, ids ...string) {
	t.Helper()
	for _, s := range ids {
		id, key, _ := strings.Cut(s, ":")
		if _, err := db.Exec(`INSERT INTO inbox (consumer, message_id, payload, ordering_key) VALUES ($1, $2, $3, nullif($4, ''))`,
			consumer, id, []byte("payload of "+id), key); err != nil {
			t.Fatalf("store %s: %v", id, err)
		}
	}
}

func effectsTable(t *testing.T, db *sql.DB) {
	t.Helper()
	if _, err := db.Exec(`CREATE TABLE effects (message_id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
}

// recordEffect is a handler whose effect is a row in the effects table.
func recordEffect(ctx context.Context, tx *sql.Tx, msg Message) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, msg.MessageID)
	return err
}

func newProcessor(t *testing.T, db *sql.DB, cfg ProcessorConfig, h Handler) *Processor {
	t.Helper()
	p, err := NewProcessor(db, cfg, h, WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// drain calls ProcessOnce until a call handles nothing and nothing is waiting for a retry.
func drain(t *testing.T, db *sql.DB, p *Processor) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, "no processable rows left", func() bool {
		n, err := p.ProcessOnce(context.Background())
		if err != nil {
			t.Fatalf("ProcessOnce: %v", err)
		}
		return n == 0 && countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NULL AND dead_at IS NULL AND attempts > 0`) == 0
	})
}

func TestProcessorMarksProcessedWithTheEffect(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	effectsTable(t, db)
	storeRows(t, db, "svc", "a", "b", "c")
	storeRows(t, db, "other", "a") // another consumer's row is not ours

	var seen []string
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", BatchSize: 2}, func(ctx context.Context, tx *sql.Tx, msg Message) error {
		if string(msg.Payload) != "payload of "+msg.MessageID || string(msg.Headers) != "{}" {
			t.Errorf("handler got payload %q headers %s", msg.Payload, msg.Headers)
		}
		seen = append(seen, msg.MessageID)
		return recordEffect(ctx, tx, msg)
	})
	if n, err := p.ProcessOnce(context.Background()); n != 2 || err != nil {
		t.Fatalf("first ProcessOnce = %d, %v; want 2 rows", n, err)
	}
	drain(t, db, p)
	if strings.Join(seen, ",") != "a,b,c" {
		t.Errorf("handled %v, want a,b,c in arrival order", seen)
	}
	if n := countRows(t, db, `SELECT count(*) FROM effects`); n != 3 {
		t.Errorf("effects = %d, want 3", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE consumer = 'svc' AND processed_at IS NOT NULL`); n != 3 {
		t.Errorf("processed rows = %d, want 3", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE consumer = 'other' AND processed_at IS NULL`); n != 1 {
		t.Errorf("the other consumer's row was touched")
	}
}

func TestProcessorRetriesThenDead(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	effectsTable(t, db)
	storeRows(t, db, "svc", "flaky", "broken", "fine")

	calls := map[string]int{}
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", MaxAttempts: 3, RetryBackoff: time.Millisecond, RetryBackoffMax: 2 * time.Millisecond},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			calls[msg.MessageID]++
			if msg.Attempts != calls[msg.MessageID]-1 {
				t.Errorf("%s: Attempts = %d on call %d", msg.MessageID, msg.Attempts, calls[msg.MessageID])
			}
			// The effect is written before failing: it must be rolled back.
			if err := recordEffect(ctx, tx, msg); err != nil {
				return err
			}
			switch {
			case msg.MessageID == "broken":
				return errors.New("boom")
			case msg.MessageID == "flaky" && calls["flaky"] == 1:
				panic("first call panics")
			}
			return nil
		})
	drain(t, db, p)

	if calls["broken"] != 3 || calls["flaky"] != 2 || calls["fine"] != 1 {
		t.Errorf("handler calls = %v, want broken 3, flaky 2, fine 1", calls)
	}
	var attempts int
	var lastError string
	var dead, processed bool
	err := db.QueryRow(`SELECT attempts, last_error, dead_at IS NOT NULL, processed_at IS NOT NULL FROM inbox WHERE message_id = 'broken'`).
		Scan(&attempts, &lastError, &dead, &processed)
	if err != nil || attempts != 3 || lastError != "boom" || !dead || processed {
		t.Errorf("broken row: attempts %d, last_error %q, dead %v, processed %v, err %v", attempts, lastError, dead, processed, err)
	}
	err = db.QueryRow(`SELECT attempts, last_error IS NULL, processed_at IS NOT NULL FROM inbox WHERE message_id = 'flaky'`).
		Scan(&attempts, new(bool), &processed)
	if err != nil || attempts != 1 || !processed {
		t.Errorf("flaky row: attempts %d, processed %v, err %v", attempts, processed, err)
	}
	var effects string
	if err := db.QueryRow(`SELECT string_agg(message_id, ',' ORDER BY message_id) FROM effects`).Scan(&effects); err != nil || effects != "fine,flaky" {
		t.Errorf("effects = %q (%v), want fine,flaky: a failed call's effect must be rolled back", effects, err)
	}
	// Dead rows stay dead.
	if n, err := p.ProcessOnce(context.Background()); n != 0 || err != nil {
		t.Errorf("ProcessOnce after all settled = %d, %v", n, err)
	}
}

// A batch handles each message in a savepoint of its own: a failed handler's effect is
// rolled back and the others' stay, whichever succeeded before or after it, and rows
// left behind a failed row of their key are not handled.
func TestProcessorBatchKeepsEachMessagesOwnEffect(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	effectsTable(t, db)
	storeRows(t, db, "svc", "a", "b", "d:k", "c", "e:k")

	var seen []string
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", Ordered: true, RetryBackoff: time.Hour, RetryBackoffMax: time.Hour},
		func(ctx context.Context, tx *sql.Tx, msg Message) error {
			seen = append(seen, msg.MessageID)
			if err := recordEffect(ctx, tx, msg); err != nil {
				return err
			}
			if msg.MessageID == "b" || msg.MessageID == "d" {
				return errors.New("boom")
			}
			return nil
		})
	if n, err := p.ProcessOnce(context.Background()); n != 4 || err != nil {
		t.Fatalf("ProcessOnce = %d, %v; want 4 rows handled in one batch", n, err)
	}
	if got := strings.Join(seen, ","); got != "a,b,d,c" {
		t.Errorf("handled %s, want a,b,d,c (e waits behind d)", got)
	}
	var effects, processed, failed string
	if err := db.QueryRow(`SELECT coalesce(string_agg(message_id, ',' ORDER BY message_id), '') FROM effects`).Scan(&effects); err != nil || effects != "a,c" {
		t.Errorf("effects = %q (%v), want a,c", effects, err)
	}
	if err := db.QueryRow(`SELECT coalesce(string_agg(message_id, ',' ORDER BY message_id) FILTER (WHERE processed_at IS NOT NULL), ''),
		coalesce(string_agg(message_id, ',' ORDER BY message_id) FILTER (WHERE attempts = 1 AND last_error = 'boom'), '')
		FROM inbox WHERE consumer = 'svc'`).Scan(&processed, &failed); err != nil || processed != "a,c" || failed != "b,d" {
		t.Errorf("processed %q, failed %q (%v); want a,c and b,d", processed, failed, err)
	}
}

func TestProcessorPerKeyOrder(t *testing.T) {
	t.Parallel()
	for _, ordered := range []bool{true, false} {
		t.Run(map[bool]string{true: "ordered", false: "unordered"}[ordered], func(t *testing.T) {
			t.Parallel()
			db, _, _ := migrated(t, "inbox")
			storeRows(t, db, "svc", "a1:a", "b1:b", "a2:a", "n1", "b2:b")
			var seen []string
			p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", MaxAttempts: 1, Ordered: ordered},
				func(ctx context.Context, tx *sql.Tx, msg Message) error {
					seen = append(seen, msg.MessageID)
					if msg.MessageID == "a1" {
						return errors.New("dead on first failure")
					}
					return nil
				})
			drain(t, db, p)
			want := "a1,b1,n1,b2" // a2 waits behind its dead predecessor
			if !ordered {
				want = "a1,b1,a2,n1,b2"
			}
			if got := strings.Join(seen, ","); got != want {
				t.Errorf("handled %s, want %s", got, want)
			}
		})
	}
}

// TestProcessorCrashBeforeCommit kills a processing process after the handler ran and
// the row was marked, before the commit: neither the effect nor the mark survives, and
// the next processor does the work once.
func TestProcessorCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	db, dbURL, _ := migrated(t, "inbox")
	effectsTable(t, db)
	storeRows(t, db, "svc", "m1")

	runUntilKilled(t, db, dbURL, "TestHelperProcessorProcess", "processor")
	if n := countRows(t, db, `SELECT count(*) FROM effects`); n != 0 {
		t.Errorf("effects after the crash = %d, want 0", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NULL AND attempts = 0`); n != 1 {
		t.Errorf("the row is not untouched after the crash")
	}

	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc"}, recordEffect)
	if n, err := p.ProcessOnce(context.Background()); n != 1 || err != nil {
		t.Fatalf("ProcessOnce after the crash = %d, %v; want 1", n, err)
	}
	if n := countRows(t, db, `SELECT count(*) FROM effects WHERE message_id = 'm1'`); n != 1 {
		t.Errorf("effects = %d, want 1", n)
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL`); n != 1 {
		t.Errorf("the row is not processed")
	}
}

// TestHelperProcessorProcess is the process TestProcessorCrashBeforeCommit kills.
func TestHelperProcessorProcess(t *testing.T) {
	if os.Getenv("SIDEBOX_INBOX_HELPER") != "processor" {
		t.Skip("helper process only")
	}
	db, err := openDB(os.Getenv("HELPER_DB"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewProcessor(db, ProcessorConfig{Consumer: "svc"}, recordEffect)
	if err != nil {
		t.Fatal(err)
	}
	p.beforeCommit = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	_, err = p.ProcessOnce(context.Background())
	t.Fatalf("ProcessOnce returned (%v); the process should have been killed", err)
}

func TestProcessorRunStopsOnCancel(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	effectsTable(t, db)
	storeRows(t, db, "svc", "a", "b")
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc", PollInterval: 10 * time.Millisecond}, recordEffect)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, "2 rows processed", func() bool {
		return countRows(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL`) == 2
	})
	storeRows(t, db, "svc", "c") // picked up by polling
	testenv.Eventually(t, 10*time.Second, "the late row processed", func() bool {
		return countRows(t, db, `SELECT count(*) FROM effects WHERE message_id = 'c'`) == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func TestClaim(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	ctx := context.Background()
	claim := func(id string, commit bool) bool {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		first, err := Claim(ctx, tx, "svc", id)
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return first
	}
	if !claim("x", false) {
		t.Error("first claim of x = false")
	}
	if !claim("x", true) {
		t.Error("claim of x after a rolled-back claim = false, want true")
	}
	if claim("x", true) {
		t.Error("second claim of x = true, want false")
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE message_id = 'x' AND processed_at IS NOT NULL`); n != 1 {
		t.Errorf("claimed rows = %d, want 1 processed row", n)
	}
	tx, _ := db.BeginTx(ctx, nil)
	defer tx.Rollback()
	if _, err := Claim(ctx, tx, "svc", ""); !errors.Is(err, ErrNoMessageID) {
		t.Errorf("Claim of an empty id = %v, want ErrNoMessageID", err)
	}
}

func TestClaimerOnSchemaQualifiedTable(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "app.orders_inbox")
	c, err := NewClaimer("app.orders_inbox")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		first, err := c.Claim(context.Background(), db, "svc", "m")
		if err != nil || first != want {
			t.Errorf("claim %d = %v, %v; want %v", i, first, err, want)
		}
	}
	if _, err := NewClaimer("App.Inbox"); err == nil {
		t.Error("NewClaimer accepted an upper-case name")
	}
}

// TestClaimRefusesUnstorableIDs: an id PostgreSQL text cannot hold is refused before any
// SQL is sent, so the caller's transaction stays usable.
func TestClaimRefusesUnstorableIDs(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	ctx := context.Background()
	for _, id := range []string{"bad\xff", "nul\x00byte"} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Claim(ctx, tx, "svc", id); !errors.Is(err, ErrInvalidMessageID) {
			t.Errorf("Claim(%q) = %v, want ErrInvalidMessageID", id, err)
		}
		if _, err := Claim(ctx, tx, "svc\x00", "ok"); err == nil {
			t.Errorf("Claim with a consumer name holding NUL succeeded")
		}
		first, err := Claim(ctx, tx, "svc", "after-"+strings.ToValidUTF8(strings.ReplaceAll(id, "\x00", ""), ""))
		if err != nil || !first {
			t.Errorf("the transaction is unusable after Claim(%q): %v, %v", id, first, err)
		}
		if err := tx.Commit(); err != nil {
			t.Errorf("commit after Claim(%q): %v", id, err)
		}
	}
	if n := countRows(t, db, `SELECT count(*) FROM inbox`); n != 2 {
		t.Errorf("inbox rows = %d, want the 2 valid claims", n)
	}
}

// The processor's claim runs without JIT: the setting is made in the batch's
// transaction before the claim, whatever the session's default.
func TestProcessorClaimsWithoutJIT(t *testing.T) {
	t.Parallel()
	db, _, _ := migrated(t, "inbox")
	storeRows(t, db, "svc", "a")
	var jit string
	p := newProcessor(t, db, ProcessorConfig{Consumer: "svc"}, func(ctx context.Context, tx *sql.Tx, msg Message) error {
		return tx.QueryRowContext(ctx, `SHOW jit`).Scan(&jit)
	})
	if n, err := p.ProcessOnce(context.Background()); n != 1 || err != nil {
		t.Fatalf("ProcessOnce = %d, %v; want 1 row", n, err)
	}
	if jit != "off" {
		t.Errorf("jit = %q in the processor's transaction, want off", jit)
	}
}
