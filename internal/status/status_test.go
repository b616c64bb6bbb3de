package status

import (
	"context"
	"database/sql"
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

func migrate(t *testing.T, db *sql.DB, ob, ib pg.Table) {
	t.Helper()
	testenv.Migrate(t, db, outbox.Migrate, ob.String())
	testenv.Migrate(t, db, inbox.Migrate, ib.String())
}

func TestMissingTablesAreNull(t *testing.T) {
	db, _ := testenv.DB(t)
	r, err := Collect(context.Background(), db, pg.MustParseTable("outbox"), pg.MustParseTable("app.inbox"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	if string(b) != `{"outbox":null,"inbox":null}` {
		t.Errorf("report = %s", b)
	}
}

func TestCounts(t *testing.T) {
	db, _ := testenv.DB(t)
	ob, ib := pg.MustParseTable("app.orders_outbox"), pg.MustParseTable("app.orders_inbox")
	migrate(t, db, ob, ib)
	ctx := context.Background()

	r, err := Collect(ctx, db, ob, ib)
	if err != nil {
		t.Fatal(err)
	}
	if *r.Outbox != (Outbox{}) || *r.Inbox != (Inbox{}) {
		t.Errorf("empty tables: %+v %+v", *r.Outbox, *r.Inbox)
	}

	// Key a: head retrying, one behind it (blocked). Key b: head pending, a dead row
	// behind (not blocked: the head decides). Key c: head dead (blocked). No key: one
	// pending, one delayed an hour (not due, so not in the age), one retrying.
	testenv.Exec(t, db, `INSERT INTO app.orders_outbox (payload, ordering_key, attempts, dead_at, created_at, available_at) VALUES
		('a1', 'a', 2, NULL, now() - interval '100 seconds', now() + interval '1 minute'),
		('a2', 'a', 0, NULL, now() - interval '50 seconds', now() - interval '50 seconds'),
		('b1', 'b', 0, NULL, now(), now()),
		('b2', 'b', 10, now(), now(), now()),
		('c1', 'c', 10, now(), now() - interval '1 day', now()),
		('n1', NULL, 0, NULL, now() - interval '10 seconds', now() - interval '10 seconds'),
		('n2', NULL, 0, NULL, now() - interval '1 day', now() + interval '1 hour'),
		('n3', NULL, 1, NULL, now(), now() + interval '1 minute')`)
	testenv.Exec(t, db, `INSERT INTO app.orders_inbox (consumer, message_id, processed_at, dead_at) VALUES
		('c', '1', NULL, NULL), ('c', '2', NULL, NULL), ('c', '3', now(), NULL), ('d', '1', NULL, now())`)

	o, err := OutboxStatus(ctx, db, ob)
	if err != nil {
		t.Fatal(err)
	}
	if o.Pending != 4 || o.Retrying != 2 || o.Dead != 2 || o.BlockedKeys != 2 {
		t.Errorf("outbox = %+v, want pending 4, retrying 2, dead 2, blocked keys 2", *o)
	}
	// The retrying a1 counts from its creation, 100 s ago; n2 is not due yet.
	if o.OldestPendingAgeSeconds < 100 || o.OldestPendingAgeSeconds > 110 {
		t.Errorf("oldest pending age = %v, want about 100", o.OldestPendingAgeSeconds)
	}
	in, err := InboxStatus(ctx, db, ib)
	if err != nil {
		t.Fatal(err)
	}
	if *in != (Inbox{Unprocessed: 2, Dead: 1}) {
		t.Errorf("inbox = %+v", *in)
	}

	// The Sampler's bounded counts agree below their limit, and stay at least the
	// limit above it.
	if so, err := outboxdb.Count(ctx, db, ob, 100); err != nil || so.Pending != o.Pending || so.Retrying != o.Retrying ||
		so.Dead != o.Dead || so.BlockedKeys != o.BlockedKeys || so.OldestPendingAgeSeconds-o.OldestPendingAgeSeconds > 1 {
		t.Errorf("sampled outbox = %+v, %v; want %+v", so, err, *o)
	}
	if si, err := inboxdb.Count(ctx, db, ib, 100); err != nil || *si != *in {
		t.Errorf("sampled inbox = %+v, %v; want %+v", si, err, *in)
	}
	if so, err := outboxdb.Count(ctx, db, ob, 2); err != nil || so.Pending < 0 || so.Retrying != 2 || so.Dead != 2 {
		t.Errorf("outbox sampled with limit 2 = %+v, %v", so, err)
	}
	if si, err := inboxdb.Count(ctx, db, ib, 2); err != nil || si.Unprocessed < 2 || si.Dead != 1 {
		t.Errorf("inbox sampled with limit 2 = %+v, %v", si, err)
	}
}

// The Sampler's statements cost little whether the planner believes the tables hold
// 10,000 rows, 5,000,000 or 50,000,000: what they read is bounded (SampleLimit), so
// their cost stays far below jit_above_cost (100,000) at any size. Every few seconds, a
// count over a large backlog would be a cliff of its own (a scan, and its JIT
// compilation).
func TestSampleCostDoesNotGrowWithTable(t *testing.T) {
	db, _ := testenv.DB(t)
	ob, ib := pg.MustParseTable("outbox"), pg.MustParseTable("inbox")
	migrate(t, db, ob, ib)
	testenv.Exec(t, db, `INSERT INTO outbox (payload, attempts, dead_at, ordering_key)
		SELECT 'x', CASE WHEN i % 100 = 0 THEN 1 ELSE 0 END, CASE WHEN i % 500 = 0 THEN now() END, 'k' || (i % 10)
		FROM generate_series(1, 1000) i`)
	testenv.Exec(t, db, `INSERT INTO inbox (consumer, message_id, processed_at) SELECT 'c', i::text, CASE WHEN i % 2 = 0 THEN now() END FROM generate_series(1, 1000) i`)
	outboxSample, blockedSample := outboxdb.SampledCountSQL(ob)
	queries := map[string]string{
		"outbox sample": outboxSample,
		"inbox sample":  inboxdb.SampledCountSQL(ib),
		"blocked keys":  blockedSample,
	}
	var super bool
	if err := db.QueryRow(`SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Skip("setting a table's statistics takes a superuser")
	}
	cost := map[int]map[string]float64{}
	sizes := []int{10_000, 5_000_000, 50_000_000}
	for _, rows := range sizes {
		for _, tbl := range []pg.Table{ob, ib} {
			testenv.Exec(t, db, `ALTER TABLE `+tbl.String()+` SET (autovacuum_enabled = false)`)
			testenv.Exec(t, db, `ANALYZE `+tbl.String())
			testenv.Exec(t, db, `UPDATE pg_class SET reltuples = $1 WHERE oid = $2::regclass`, rows, tbl.String())
		}
		cost[rows] = map[string]float64{}
		for name, q := range queries {
			var raw []byte
			args := []any{SampleLimit}
			if name == "blocked keys" {
				args = nil
			}
			if err := db.QueryRow(`EXPLAIN (FORMAT JSON) `+q, args...).Scan(&raw); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var plans []struct {
				Plan struct {
					TotalCost float64 `json:"Total Cost"`
				} `json:"Plan"`
			}
			if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("%s: cannot read the plan: %v", name, err)
			}
			cost[rows][name] = plans[0].Plan.TotalCost
		}
	}
	for name := range queries {
		small, big, huge := cost[sizes[0]][name], cost[sizes[1]][name], cost[sizes[2]][name]
		t.Logf("%s: cost %.0f at 10,000 rows, %.0f at 5,000,000, %.0f at 50,000,000", name, small, big, huge)
		if max(big, huge) > 20_000 {
			t.Errorf("%s: the estimated cost grows with the table: %.0f at 5,000,000 rows, %.0f at 50,000,000", name, big, huge)
		}
	}
}

func TestSampler(t *testing.T) {
	db, _ := testenv.DB(t)
	ob, ib := pg.MustParseTable("outbox"), pg.MustParseTable("inbox")
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	s := NewSampler(db, SamplerConfig{Interval: time.Minute, Outbox: ob, Inbox: ib}, zap.NewNop(), m)
	ctx := context.Background()

	if err := s.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := gauge(t, reg, "sidebox_outbox_pending", "outbox"); ok {
		t.Error("a pending series for a table that does not exist")
	}

	migrate(t, db, ob, ib)
	testenv.Exec(t, db, `INSERT INTO outbox (payload, created_at, available_at) VALUES ('x', now() - interval '1 minute', now() - interval '1 minute'), ('y', now(), now())`)
	testenv.Exec(t, db, `INSERT INTO inbox (consumer, message_id) VALUES ('c', '1')`)
	if err := s.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	if v := value(t, reg, "sidebox_outbox_pending", "outbox"); v != 2 {
		t.Errorf("pending gauge = %v", v)
	}
	if v := value(t, reg, "sidebox_outbox_oldest_pending_age_seconds", "outbox"); v < 60 || v > 70 {
		t.Errorf("oldest pending gauge = %v", v)
	}
	if v := value(t, reg, "sidebox_inbox_unprocessed", "inbox"); v != 1 {
		t.Errorf("inbox unprocessed gauge = %v", v)
	}

	// Run samples at once and stops with its context.
	testenv.Exec(t, db, `DELETE FROM outbox`)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(rctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for value(t, reg, "sidebox_outbox_pending", "outbox") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sample")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// gauge reads the gauge name{table=table} from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name, table string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

func value(t *testing.T, reg *prometheus.Registry, name, table string) float64 {
	t.Helper()
	v, ok := gauge(t, reg, name, table)
	if !ok {
		t.Fatalf("no series %s{table=%q}", name, table)
	}
	return v
}

// An inbox-only sidecar (sidebox inbox) has no outbox table: the sampler measures the
// inbox and looks up no unnamed table.
func TestSamplerInboxOnly(t *testing.T) {
	db, _ := testenv.DB(t)
	ib := pg.MustParseTable("inbox")
	testenv.Migrate(t, db, inbox.Migrate, ib.String())
	testenv.Exec(t, db, `INSERT INTO inbox (consumer, message_id) VALUES ('c', '1')`)
	reg := prometheus.NewRegistry()
	s := NewSampler(db, SamplerConfig{Interval: time.Minute, Inbox: ib}, zap.NewNop(), metrics.New(reg))
	if err := s.Sample(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := value(t, reg, "sidebox_inbox_unprocessed", "inbox"); v != 1 {
		t.Errorf("inbox unprocessed gauge = %v", v)
	}
}
