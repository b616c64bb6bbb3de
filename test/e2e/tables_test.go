package e2e_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// One sidecar serves two outbox tables in two schemas (SIDEBOX_OUTBOX_TABLE=a,b): each
// table's rows reach the broker, the metrics are per table, and a flood of 50,000 rows
// on one table does not delay the other's single messages by more than a poll
// interval: they are delivered while the flood is still being drained.
// About 10 s.
func TestTwoTablesOneSidecar(t *testing.T) {
	const (
		flood        = 50_000
		pollInterval = time.Second
		singles      = 5
		warmups      = 3
	)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	db, dbURL := testenv.DB(t)
	amqpURL := testenv.AMQPURL(t)
	tableA, tableB := "tenant_a.outbox", "tenant_b.outbox"
	qa, qb := testenv.Name(t, "tables_a"), testenv.Name(t, "tables_b")

	env := []string{
		"SIDEBOX_DATABASE_URL=" + dbURL,
		"SIDEBOX_OUTBOX_TABLE=" + tableA + "," + tableB,
		"SIDEBOX_INBOX_TABLE=tenant_a.inbox,tenant_b.inbox",
	}
	sidebox(t, ctx, env, "migrate", "up")
	for _, tb := range []string{tableA, tableB, "tenant_a.inbox", "tenant_b.inbox"} {
		testenv.Count(t, db, `SELECT count(*) FROM `+tb)
	}

	ch := amqpChannel(t, amqpURL)
	for _, q := range []string{qa, qb} {
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatalf("declare queue %s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(qa, false, false, false)
		_, _ = ch.QueueDelete(qb, false, false, false)
	})

	// Table B's messages, as they arrive.
	deliveries, err := ch.Consume(qb, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	arrived := map[int]time.Time{}
	got := make(chan struct{}, singles+warmups)
	go func() {
		for d := range deliveries {
			n, _ := strconv.Atoi(string(d.Body))
			mu.Lock()
			arrived[n] = time.Now()
			mu.Unlock()
			got <- struct{}{}
		}
	}()

	relay := startSidebox(t, "relay", append(env,
		"SIDEBOX_AMQP_URL="+amqpURL,
		"SIDEBOX_POLL_INTERVAL="+pollInterval.String(),
		"SIDEBOX_STATUS_INTERVAL=200ms",
	))
	relay.waitReady(t, ctx)

	// Messages on B before the flood, then the flood on A, in one transaction.
	send := func(i int) time.Time {
		committed := time.Now()
		testenv.Exec(t, db, `INSERT INTO `+tableB+` (exchange, routing_key, payload) VALUES ('', $1, convert_to($2, 'UTF8'))`, qb, strconv.Itoa(i))
		return committed
	}
	// The same path's latency without a flood, on this machine and broker now (both
	// shared): the bound below allows for it.
	var baseline time.Duration
	for i := -warmups; i < 0; i++ {
		committed := send(i)
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d of %s not delivered within 10s", i, tableB)
		}
		mu.Lock()
		if i > -warmups { // the first one also opens the relay's channel
			baseline = max(baseline, arrived[i].Sub(committed))
		}
		mu.Unlock()
	}
	// bound is generous (a notification delivers within tens of milliseconds on an
	// idle machine), but a message that waited for the flood to drain (tens of seconds
	// at the relay's rate on a shared machine) misses it.
	bound := pollInterval + 500*time.Millisecond + 2*baseline
	testenv.Exec(t, db, `INSERT INTO `+tableA+` (exchange, routing_key, payload)
		SELECT '', $1, convert_to(g::text, 'UTF8') FROM generate_series(1, $2) g`, qa, flood)

	waitFor(t, ctx, 30*time.Second, tableA+"'s relay at work on the flood", func() bool {
		v, _ := relay.Series("sidebox_outbox_published_total", "table", tableA)
		return v > 0
	})

	// Single messages on B, one at a time, while A's relay works through the flood.
	var worst time.Duration
	var lats []time.Duration
	for i := range singles {
		committed := send(i)
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatalf("message %d of %s not delivered within 30s", i, tableB)
		}
		mu.Lock()
		lat := arrived[i].Sub(committed)
		mu.Unlock()
		worst = max(worst, lat)
		lats = append(lats, lat)
		if lat > bound {
			t.Errorf("message %d of %s took %v, more than %v (poll interval %v, %v without flood)", i, tableB, lat, bound, pollInterval, baseline)
		}
	}
	left := testenv.Count(t, db, `SELECT count(*) FROM `+tableA)
	t.Logf("%s: %d messages in %v (slowest %v, bound %v, without flood %v); %s still held %d of %d rows",
		tableB, singles, lats, worst, bound, baseline, tableA, left, flood)
	if left == 0 {
		t.Errorf("%s drained before %s's messages were measured: the test shows nothing about fairness; raise the flood", tableA, tableB)
	}

	// The metrics say which table published what: the flood's count grows while the
	// singles are all counted. (Draining the flood takes long on a shared machine; the
	// relay's SIGTERM drain leaves the rest in the table.)
	waitFor(t, ctx, 10*time.Second, "per-table counters and gauges", func() bool {
		a, _ := relay.Series("sidebox_outbox_published_total", "table", tableA)
		b, _ := relay.Series("sidebox_outbox_published_total", "table", tableB)
		pa, okA := relay.Series("sidebox_outbox_pending", "table", tableA)
		pb, okB := relay.Series("sidebox_outbox_pending", "table", tableB)
		return a > 0 && b == singles+warmups && okA && okB && pa > 0 && pb == 0
	})
	// status sees one relay per table (its heartbeat), and none once it stopped.
	if got := relaysSeen(t, ctx, env); got[tableA] != 1 || got[tableB] != 1 {
		t.Errorf("status while the relay runs: relays %v, want 1 per table", got)
	}
	if err := relay.stop(); err != nil {
		t.Error(err)
	}
	if got := relaysSeen(t, ctx, env); got[tableA] != 0 || got[tableB] != 0 {
		t.Errorf("status after the relay stopped: relays %v, want none", got)
	}
}

// relaysSeen runs `sidebox status --json` and returns the relays seen per outbox table.
func relaysSeen(t *testing.T, ctx context.Context, env []string) map[string]int64 {
	t.Helper()
	cmd := exec.CommandContext(ctx, sideboxBin, "status", "--json")
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sidebox status --json: %v", err)
	}
	var rep struct {
		Tables []struct {
			Kind, Table string
			Detail      *struct{ Relays *int64 }
		}
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("status --json printed %s: %v", out, err)
	}
	seen := map[string]int64{}
	for _, tb := range rep.Tables {
		if tb.Kind == "outbox" && tb.Detail != nil && tb.Detail.Relays != nil {
			seen[tb.Table] = *tb.Detail.Relays
		}
	}
	return seen
}
