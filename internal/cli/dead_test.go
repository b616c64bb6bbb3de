package cli_test

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/testenv"
)

// deadIDs returns the ids that `sidebox dead list --json` prints (message ids for the
// inbox).
func deadIDs(t *testing.T, vars []string, args ...string) []string {
	t.Helper()
	r := run(t, vars, append([]string{"dead", "list", "--json", "--limit", "0"}, args...)...)
	if r.code != 0 {
		t.Fatalf("dead list: %s", r)
	}
	var rows []struct {
		ID        string `json:"id"`
		MessageID string `json:"message_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("dead list --json printed %q: %v", r.stdout, err)
	}
	var ids []string
	for _, x := range rows {
		ids = append(ids, x.ID+x.MessageID)
	}
	return ids
}

// mustRun runs sidebox and fails unless it exits 0 and prints every one of want.
func mustRun(t *testing.T, vars []string, want []string, args ...string) string {
	t.Helper()
	r := run(t, vars, args...)
	if r.code != 0 {
		t.Fatalf("sidebox %s: %s", strings.Join(args, " "), r)
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("sidebox %s: output lacks %q:\n%s", strings.Join(args, " "), w, r.stdout)
		}
	}
	return r.stdout
}

// maxWritten bounds the rows (messages) the round-trip tests write while the tools
// run, so that a slow machine does not make them drain more.
const maxWritten = 600

// orderedSink records the messages of a queue in arrival order.
type orderedSink struct {
	mu   sync.Mutex
	msgs []amqp.Delivery
}

func (s *orderedSink) all() []amqp.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]amqp.Delivery(nil), s.msgs...)
}

// The dead-row tools on the outbox while `sidebox relay` runs and a writer keeps
// writing: rows of three keys and one unkeyed row go dead (unroutable, one attempt
// allowed), their keys wait behind them; once the route exists, one key's row is
// retried, another's discarded (after a dry run), the rest retried with --all. Every
// row arrives exactly once but the discarded one, and each key in seq order: a retried
// row went out at its original place, before the rows written after it.
func TestDeadOutboxRoundTripWhileRelayRuns(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	url := testenv.AMQPURL(t)
	exchange, queue := testenv.Name(t, "dead_ex"), testenv.Name(t, "dead_q")
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeDirect, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "ok", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := &orderedSink{}
	go func() {
		for d := range deliveries {
			sink.mu.Lock()
			sink.msgs = append(sink.msgs, d)
			sink.mu.Unlock()
		}
	}()

	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + url,
		"SIDEBOX_MAX_ATTEMPTS=1",
		"SIDEBOX_POLL_INTERVAL=200ms",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	d := start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"relay":"ok"`)

	var (
		seqs = map[string]int64{} // id → seq at insert
		smu  sync.Mutex
	)
	insert := func(routingKey string, key any) string {
		var id string
		var seq int64
		if err := db.QueryRow(`INSERT INTO outbox (exchange, routing_key, payload, ordering_key) VALUES ($1, $2, 'x', $3) RETURNING id::text, seq`,
			exchange, routingKey, key).Scan(&id, &seq); err != nil {
			t.Error(err)
		}
		smu.Lock()
		seqs[id] = seq
		smu.Unlock()
		return id
	}
	keys := []string{"k0", "k1", "k2", "k3"}
	var (
		written []string
		wmu     sync.Mutex
		stop    atomic.Bool
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		for i := 0; !stop.Load() && i < maxWritten; i++ {
			var key any = keys[i%len(keys)]
			if i%5 == 4 {
				key = nil
			}
			id := insert("ok", key)
			wmu.Lock()
			written = append(written, id)
			wmu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	})

	// Unroutable rows: dead at their first attempt, blocking k1, k2 and k3.
	lost := map[string]string{}
	for _, k := range []string{"k1", "k2", "k3"} {
		lost[k] = insert("later", k)
	}
	lost[""] = insert("later", nil)
	testenv.Eventually(t, 60*time.Second, "four dead rows", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL`) == 4
	})
	table := mustRun(t, vars, []string{"ID", "LAST ERROR", "NO_ROUTE", lost["k1"], lost["k2"], lost["k3"], lost[""]}, "dead", "list")
	t.Logf("dead list:\n%s", table)
	// The blocked keys wait behind their dead rows while the writer goes on.
	testenv.Eventually(t, 30*time.Second, "rows waiting behind the dead ones", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE ordering_key = 'k2' AND dead_at IS NULL`) >= 3
	})

	if err := ch.QueueBind(queue, "later", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	mustRun(t, vars, []string{"retried " + lost["k1"], "retried 1 dead rows"}, "dead", "retry", "--key", "k1")
	mustRun(t, vars, []string{"would discard " + lost["k2"], "dry run: nothing changed"}, "dead", "discard", "--key", "k2", "--dry-run")
	if ids := deadIDs(t, vars); len(ids) != 3 {
		t.Errorf("after the dry run: dead rows %v, want 3", ids)
	}
	if r := run(t, vars, "dead", "discard"); r.code != 2 || !strings.Contains(r.stderr, "say which dead rows") {
		t.Errorf("dead discard without a selector: want exit 2, got %s", r)
	}
	mustRun(t, vars, []string{"discarded " + lost["k2"], "discarded 1 dead rows"}, "dead", "discard", "--id", lost["k2"])
	mustRun(t, vars, []string{"retried " + lost["k3"], "retried " + lost[""], "retried 2 dead rows"}, "dead", "retry", "--all")
	mustRun(t, vars, []string{"no dead rows matched; nothing changed"}, "dead", "retry", "--all")

	stop.Store(true)
	wg.Wait()
	testenv.Eventually(t, 60*time.Second, "the outbox drained", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox`) == 0
	})
	want := map[string]bool{lost["k1"]: true, lost["k3"]: true, lost[""]: true}
	wmu.Lock()
	for _, id := range written {
		want[id] = true
	}
	wmu.Unlock()
	testenv.Eventually(t, 30*time.Second, "every row delivered", func() bool { return len(sink.all()) >= len(want) })
	time.Sleep(200 * time.Millisecond) // a duplicate, were there one, would be in by now

	// A key's rows go out pipelined: the rows after a failed one in the same run may
	// arrive before it, and go again after it (README, "A failure in the middle of a
	// key's run"). So per key the last arrival of each row is in seq order, and only
	// the keys whose rows failed see duplicates; the tools add none.
	seen := map[string]int{}
	last := map[string]int{} // message id: index of its last arrival
	keyOf := map[string]string{}
	for i, m := range sink.all() {
		seen[m.MessageId]++
		last[m.MessageId] = i
		key, _ := m.Headers["x-ordering-key"].(string)
		keyOf[m.MessageId] = key
		seq, _ := m.Headers["x-outbox-seq"].(int64)
		// The seq it was written with: a retried row keeps its place in its key.
		if seq != seqs[m.MessageId] {
			t.Errorf("row %s arrived with seq %d, written with %d", m.MessageId, seq, seqs[m.MessageId])
		}
	}
	byKey := map[string][]string{}
	for id, key := range keyOf {
		if key != "" {
			byKey[key] = append(byKey[key], id)
		}
	}
	for key, ids := range byKey {
		slices.SortFunc(ids, func(a, b string) int { return cmp.Compare(seqs[a], seqs[b]) })
		for i := 1; i < len(ids); i++ {
			if last[ids[i]] < last[ids[i-1]] {
				t.Errorf("key %s: seq %d last arrived before seq %d", key, seqs[ids[i]], seqs[ids[i-1]])
			}
		}
	}
	failedKeys := map[string]bool{"k1": true, "k2": true, "k3": true}
	for id := range want {
		switch {
		case seen[id] == 0:
			t.Errorf("row %s never delivered", id)
		case seen[id] > 1 && !failedKeys[keyOf[id]]:
			t.Errorf("row %s of key %q delivered %d times; only keys with a failed row may repeat", id, keyOf[id], seen[id])
		}
	}
	if seen[lost["k2"]] != 0 {
		t.Errorf("the discarded row was delivered")
	}
	if len(seen) != len(want) {
		t.Errorf("%d distinct messages delivered, want %d", len(seen), len(want))
	}
	t.Logf("%d rows written while the tools ran, all delivered, each key's last arrivals in order", len(want))
}

// The dead-row tools on the inbox while `sidebox inbox` stores deliveries and an
// ordered processor runs: messages of three keys and one unkeyed message fail their
// only attempt and go dead, their keys wait; once the handler is fixed, one key's row
// is retried, another's discarded, the rest retried with --all. Every message takes
// effect exactly once but the discarded one, which never does (a redelivery of it is
// a duplicate), and each key in arrival order.
func TestDeadInboxRoundTripWhileProcessorRuns(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	url := testenv.AMQPURL(t)
	queue, _ := amqpQueue(t)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + url,
		"SIDEBOX_INBOX_QUEUE=" + queue,
		"SIDEBOX_INBOX_WORKERS=1",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	testenv.Exec(t, db, `CREATE TABLE effects (n bigserial PRIMARY KEY, message_id text NOT NULL, key text)`)
	d := start(t, vars, "inbox")
	d.waitFor(t, "/readyz", 200, `"inbox":"ok"`)

	var healed atomic.Bool
	p, err := inbox.NewProcessor(db, inbox.ProcessorConfig{
		Consumer: queue, Ordered: true, MaxAttempts: 1, PollInterval: 20 * time.Millisecond,
	}, func(ctx context.Context, tx *sql.Tx, m inbox.Message) error {
		if strings.HasPrefix(string(m.Payload), "poison") && !healed.Load() {
			return fmt.Errorf("cannot handle %s", m.Payload)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO effects (message_id, key) VALUES ($1, nullif($2, ''))`, m.MessageID, m.OrderingKey)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { _ = p.Run(ctx) })

	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	pubCh, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var pmu sync.Mutex
	publish := func(id, key, body string) {
		pmu.Lock()
		defer pmu.Unlock()
		h := amqp.Table{}
		if key != "" {
			h["x-ordering-key"] = key
		}
		if err := pubCh.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{MessageId: id, Headers: h, Body: []byte(body)}); err != nil {
			t.Error(err)
		}
	}
	keys := []string{"k0", "k1", "k2", "k3"}
	var (
		sent  []string
		order = map[string]int{} // message id → publish order
		stop  atomic.Bool
		pwg   sync.WaitGroup
		smu   sync.Mutex
	)
	send := func(id, key, body string) {
		smu.Lock()
		order[id] = len(order)
		sent = append(sent, id)
		smu.Unlock()
		publish(id, key, body)
	}
	pwg.Go(func() {
		for i := 0; !stop.Load() && i < maxWritten; i++ {
			key := keys[i%len(keys)]
			if i%5 == 4 {
				key = ""
			}
			send("m-"+strconv.Itoa(i), key, "ok")
			time.Sleep(2 * time.Millisecond)
		}
	})
	poison := map[string]string{}
	for _, k := range []string{"k1", "k2", "k3", ""} {
		poison[k] = "poison-" + k
		send(poison[k], k, "poison "+k)
	}
	testenv.Eventually(t, 60*time.Second, "four dead inbox rows", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM inbox WHERE dead_at IS NOT NULL`) == 4
	})
	mustRun(t, vars, []string{"CONSUMER", "MESSAGE ID", "cannot handle poison", poison["k1"], poison["k2"], poison["k3"], poison[""]},
		"dead", "list", "--inbox")
	testenv.Eventually(t, 30*time.Second, "rows waiting behind the dead ones", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM inbox WHERE ordering_key = 'k2' AND processed_at IS NULL AND dead_at IS NULL`) >= 3
	})

	healed.Store(true)
	mustRun(t, vars, []string{"retried consumer " + queue + " message " + poison["k1"], "retried 1 dead rows"},
		"dead", "retry", "--inbox", "--consumer", queue, "--key", "k1")
	mustRun(t, vars, []string{"would discard consumer " + queue + " message " + poison["k2"], "dry run"},
		"dead", "discard", "--inbox", "--id", poison["k2"], "--dry-run")
	mustRun(t, vars, []string{"discarded consumer " + queue + " message " + poison["k2"], "discarded 1 dead rows"},
		"dead", "discard", "--inbox", "--id", poison["k2"])
	mustRun(t, vars, []string{poison["k3"], poison[""], "retried 2 dead rows"}, "dead", "retry", "--inbox", "--all")
	if ids := deadIDs(t, vars, "--inbox"); len(ids) != 0 {
		t.Errorf("dead rows left: %v", ids)
	}

	stop.Store(true)
	pwg.Wait()
	publish(poison["k2"], "k2", "poison again") // a redelivery of the discarded message
	smu.Lock()
	want := len(sent) - 1
	smu.Unlock()
	testenv.Eventually(t, 60*time.Second, "every message took effect", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM effects`) >= want &&
			testenv.Count(t, db, `SELECT count(*) FROM inbox WHERE processed_at IS NULL`) == 0
	})
	time.Sleep(200 * time.Millisecond)

	rs, err := db.Query(`SELECT message_id, coalesce(key, '') FROM effects ORDER BY n`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	seen := map[string]int{}
	last := map[string]int{}
	for rs.Next() {
		var id, key string
		if err := rs.Scan(&id, &key); err != nil {
			t.Fatal(err)
		}
		seen[id]++
		if key != "" {
			if o, ok := last[key]; ok && order[id] <= o {
				t.Errorf("key %s: %s took effect after a message sent later", key, id)
			}
			last[key] = order[id]
		}
	}
	if seen[poison["k2"]] != 0 {
		t.Errorf("the discarded message took effect")
	}
	for _, id := range sent {
		if id != poison["k2"] && seen[id] != 1 {
			t.Errorf("message %s took effect %d times, want once", id, seen[id])
		}
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM inbox WHERE message_id = $1 AND processed_at IS NOT NULL AND last_error LIKE 'discarded: %'`, poison["k2"]); n != 1 {
		t.Errorf("the discarded row is not kept as processed")
	}
	t.Logf("%d messages sent while the tools ran, each took effect once, in order per key", len(sent))
}

// replay republishes kept rows published since a time or a duration ago, and refuses
// a missing or malformed --since.
func TestReplayCommand(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn)}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	testenv.Exec(t, db, `INSERT INTO outbox (payload, published_at) VALUES ('old', now() - interval '3 hours'), ('a', now() - interval '10 minutes'), ('b', now())`)
	for _, bad := range [][]string{{"replay"}, {"replay", "--since", "yesterday"}, {"replay", "--since", "-1h"}} {
		if r := run(t, vars, bad...); r.code != 2 {
			t.Errorf("sidebox %v: want exit 2, got %s", bad, r)
		}
	}
	mustRun(t, vars, []string{"would republish 2 rows", "dry run"}, "replay", "--since", "1h", "--dry-run")
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE published_at IS NULL`); n != 0 {
		t.Errorf("the dry run changed %d rows", n)
	}
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	mustRun(t, vars, []string{"republishing 2 rows"}, "replay", "--since", since)
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE published_at IS NULL AND attempts = 0 AND payload IN ('a', 'b')`); n != 2 {
		t.Errorf("%d rows pending again, want 2", n)
	}
	mustRun(t, vars, []string{"no kept rows published since"}, "replay", "--since", "1m")
}

// With SIDEBOX_OUTBOX_TABLE naming two tables, the dead-row tools and replay act on
// both, each line naming its table, and --table narrows them to one.
func TestDeadAndReplayOnSeveralTables(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	testenv.Exec(t, db, `CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b`)
	vars := []string{"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn), "SIDEBOX_OUTBOX_TABLE=tenant_a.outbox, tenant_b.outbox"}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	for _, s := range []string{"tenant_a", "tenant_b"} {
		testenv.Exec(t, db, `INSERT INTO `+s+`.outbox (ordering_key, payload, attempts, dead_at, last_error) VALUES ('k', 'dead', 1, now(), 'NO_ROUTE in `+s+`')`)
		testenv.Exec(t, db, `INSERT INTO `+s+`.outbox (payload, published_at) VALUES ('kept', now() - interval '5 minutes')`)
	}

	var rows []struct {
		Table     string `json:"table"`
		LastError string `json:"last_error"`
	}
	r := run(t, vars, "dead", "list", "--json")
	if r.code != 0 {
		t.Fatal(r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("dead list --json printed %q: %v", r.stdout, err)
	}
	if len(rows) != 2 || rows[0].Table != "tenant_a.outbox" || rows[1].Table != "tenant_b.outbox" ||
		!strings.Contains(rows[1].LastError, "tenant_b") {
		t.Errorf("dead list --json over two tables: %s", r.stdout)
	}
	mustRun(t, vars, []string{"outbox table tenant_a.outbox:", "outbox table tenant_b.outbox:", "NO_ROUTE in tenant_a"}, "dead", "list")
	if r := run(t, vars, "dead", "list", "--table", "no such"); r.code != 2 || !strings.Contains(r.stderr, `--table "no such"`) {
		t.Errorf("dead list --table with a bad name: want exit 2 naming it, got %s", r)
	}

	out := mustRun(t, vars, []string{"outbox table tenant_b.outbox: retried 1 dead rows"}, "dead", "retry", "--all", "--table", "tenant_b.outbox")
	if strings.Contains(out, "tenant_a") {
		t.Errorf("dead retry --table tenant_b.outbox touched tenant_a:\n%s", out)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM tenant_a.outbox WHERE dead_at IS NOT NULL`); n != 1 {
		t.Errorf("tenant_a dead rows after retrying tenant_b's: %d, want 1", n)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM tenant_b.outbox WHERE dead_at IS NOT NULL`); n != 0 {
		t.Errorf("tenant_b dead rows after the retry: %d, want 0", n)
	}

	mustRun(t, vars, []string{"outbox table tenant_a.outbox: would republish 1 rows", "outbox table tenant_b.outbox: would republish 1 rows"},
		"replay", "--since", "1h", "--dry-run")
	mustRun(t, vars, []string{"outbox table tenant_a.outbox: republishing 1 rows"}, "replay", "--since", "1h", "--table", "tenant_a.outbox")
	if n := testenv.Count(t, db, `SELECT count(*) FROM tenant_b.outbox WHERE published_at IS NOT NULL`); n != 1 {
		t.Errorf("replay --table tenant_a.outbox changed tenant_b: %d kept rows left, want 1", n)
	}
}
