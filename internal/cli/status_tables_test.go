package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// tablesReport is the additive part of `status --json`: every table.
type tablesReport struct {
	Outbox *struct{ Pending int64 } `json:"outbox"`
	Inbox  *struct{ Unprocessed int64 }
	Tables []struct {
		Kind, Table string
		State       *struct {
			Pending, Retrying, Dead, Unprocessed int64
			BlockedKeys                          int64 `json:"blocked_keys"`
		}
		Detail *struct {
			Relays              *int64  `json:"relays"`
			PublishedLastMinute *int64  `json:"published_last_minute"`
			OldestRetryingError *string `json:"oldest_retrying_error"`
			OldestDeadError     *string `json:"oldest_dead_error"`
		}
	}
}

// With several tables listed, migrate creates and drops them all, and status reports
// each: the contract's keys for the first, every table under "tables", with the relays
// seen in the last minute, their throughput and the oldest errors.
func TestMigrateAndStatusPerTable(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_OUTBOX_TABLE=ta.outbox,tb.outbox", "SIDEBOX_INBOX_TABLE=ta.inbox,tb.inbox"}

	r := run(t, vars, "migrate", "up")
	for _, want := range []string{"outbox table ta.outbox: applied 0001", "outbox table tb.outbox: applied 0001",
		"inbox table ta.inbox: applied 0001", "inbox table tb.inbox: applied 0001", "outbox table tb.outbox: applied 0004_relays"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("migrate up: want %q in %s", want, r)
		}
	}
	for _, q := range []string{
		`INSERT INTO ta.outbox (payload) VALUES ('a')`,
		`INSERT INTO tb.outbox (payload, ordering_key, attempts, last_error, created_at) VALUES ('b', 'k', 2, 'NOT_FOUND - no exchange ''x''', now() - interval '1 hour')`,
		`INSERT INTO tb.outbox (payload, ordering_key, attempts, last_error, created_at) VALUES ('c', 'k', 3, 'newer error', now())`,
		`INSERT INTO tb.outbox (payload, attempts, last_error, dead_at) VALUES ('d', 10, 'returned: NO_ROUTE', now())`,
		`INSERT INTO tb.inbox (consumer, message_id) VALUES ('c', '1'), ('c', '2')`,
		// Two relays of tb.outbox beat within the minute, one long gone; ta.outbox has none.
		`INSERT INTO tb.outbox_relays (instance, seen_at, published_last_minute) VALUES ('h:1', now(), 600), ('h:2', now() - interval '5 seconds', 60), ('h:3', now() - interval '10 minutes', 999)`,
	} {
		testenv.Exec(t, db, q)
	}

	r = run(t, vars, "status", "--json")
	var rep tablesReport
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
		t.Fatalf("status --json: %s", r)
	}
	if rep.Outbox == nil || rep.Outbox.Pending != 1 || rep.Inbox == nil || rep.Inbox.Unprocessed != 0 {
		t.Errorf("contract keys are not the first tables': %s", r.stdout)
	}
	if len(rep.Tables) != 4 {
		t.Fatalf("tables: %s", r.stdout)
	}
	var names []string
	for _, tb := range rep.Tables {
		names = append(names, tb.Kind+":"+tb.Table)
	}
	if strings.Join(names, " ") != "outbox:ta.outbox outbox:tb.outbox inbox:ta.inbox inbox:tb.inbox" {
		t.Errorf("tables %v", names)
	}
	a, b, ib := rep.Tables[0], rep.Tables[1], rep.Tables[3]
	if a.State == nil || a.State.Pending != 1 || a.Detail == nil || a.Detail.Relays == nil || *a.Detail.Relays != 0 ||
		a.Detail.OldestRetryingError != nil || a.Detail.OldestDeadError != nil {
		t.Errorf("ta.outbox: %s", r.stdout)
	}
	if b.State == nil || b.State.Retrying != 2 || b.State.Dead != 1 || b.State.BlockedKeys != 1 || b.Detail == nil ||
		b.Detail.Relays == nil || *b.Detail.Relays != 2 || *b.Detail.PublishedLastMinute != 660 ||
		b.Detail.OldestRetryingError == nil || *b.Detail.OldestRetryingError != "NOT_FOUND - no exchange 'x'" ||
		b.Detail.OldestDeadError == nil || *b.Detail.OldestDeadError != "returned: NO_ROUTE" {
		t.Errorf("tb.outbox: %s", r.stdout)
	}
	if ib.State == nil || ib.State.Unprocessed != 2 {
		t.Errorf("tb.inbox: %s", r.stdout)
	}

	r = run(t, vars, "status")
	for _, want := range []string{"outbox (table ta.outbox)", "outbox (table tb.outbox)", "inbox (table tb.inbox)",
		"relays (last min)", "660 (11.0/s)", "oldest retrying error NOT_FOUND - no exchange 'x'", "oldest dead error    returned: NO_ROUTE"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("status: want %q in %s", want, r)
		}
	}

	// A table dropped behind sidebox's back: null, not an error.
	testenv.Exec(t, db, `DROP TABLE tb.outbox_relays`)
	r = run(t, vars, "status", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"table":"tb.outbox"`) || !strings.Contains(r.stdout, `"relays":null`) {
		t.Errorf("status --json without the heartbeat table: %s", r)
	}
	testenv.Exec(t, db, `CREATE TABLE tb.outbox_relays (instance text PRIMARY KEY, seen_at timestamptz NOT NULL DEFAULT now(), published_last_minute bigint NOT NULL DEFAULT 0)`)

	r = run(t, vars, "migrate", "down", "--force")
	for _, want := range []string{"outbox table ta.outbox: rolled back 0001", "outbox table tb.outbox: rolled back 0001",
		"inbox table ta.inbox: rolled back 0001", "inbox table tb.inbox: rolled back 0001"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("migrate down --force: want %q in %s", want, r)
		}
	}
	r = run(t, vars, "status", "--json")
	if r.code != 0 || !strings.HasPrefix(r.stdout, `{"outbox":null,"inbox":null,"tables":[{"kind":"outbox","table":"ta.outbox","state":null}`) {
		t.Errorf("status --json after down: %s", r)
	}
}

// A repeated table name is refused with exit code 2 by every command that reads it.
func TestTableListRefused(t *testing.T) {
	t.Parallel()
	_, dsn := testenv.DB(t)
	r := run(t, []string{"SIDEBOX_DATABASE_URL=" + dsn, "SIDEBOX_OUTBOX_TABLE=a.outbox,a.outbox"}, "status")
	if r.code != 2 || !strings.Contains(r.stderr, "SIDEBOX_OUTBOX_TABLE: lists a.outbox twice") {
		t.Errorf("duplicate table: %s", r)
	}
}

// status --watch refreshes until interrupted and then exits 0; not on a terminal, the
// reports follow each other (JSON one a line), with no escape sequences.
func TestStatusWatch(t *testing.T) {
	t.Parallel()
	_, dsn := testenv.DB(t)
	if r := run(t, []string{"SIDEBOX_DATABASE_URL=" + dsn}, "migrate", "up"); r.code != 0 {
		t.Fatalf("migrate up: %s", r)
	}
	for _, args := range [][]string{{"--watch", "200ms", "--json"}, {"--watch=200ms"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, binary, append([]string{"status"}, args...)...)
		cmd.Env = env("SIDEBOX_DATABASE_URL=" + dsn)
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := func() int {
			return strings.Count(stdout.String(), `{"outbox":`) + strings.Count(stdout.String(), "outbox (table outbox)")
		}
		testenv.Eventually(t, 20*time.Second, "three reports", func() bool { return lines() >= 3 })
		_ = cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		cancel()
		if err != nil {
			t.Errorf("status %v after SIGINT: %v\n%s", args, err, stderr.String())
		}
		out := stdout.String()
		if strings.Contains(out, "\x1b[") {
			t.Errorf("status %v wrote escape sequences to a pipe", args)
		}
		if args[len(args)-1] == "--json" {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !json.Valid([]byte(l)) {
					t.Errorf("status %v: line %q is not JSON", args, l)
				}
			}
		} else if !strings.Contains(out, "--- ") {
			t.Errorf("status %v: reports not separated:\n%s", args, out)
		}
	}
	for _, bad := range [][]string{{"--watch", "soon"}, {"--watch=1ns"}, {"extra"}} {
		if r := run(t, []string{"SIDEBOX_DATABASE_URL=" + dsn}, append([]string{"status"}, bad...)...); r.code != 2 {
			t.Errorf("status %v: want exit 2, got %s", bad, r)
		}
	}
}

// syncBuffer is a bytes.Buffer that a running command writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
