package relay

import (
	"context"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/testenv"
)

// With Retention, confirmed rows are kept with published_at, never published again,
// left out of every state count and of the migrate-down guard, and purged once they
// are older than the window. Replay makes kept rows go out again with their id and
// seq.
func TestRetentionKeepsPublishedRowsThenPurges(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "rk")
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload, ordering_key)
		SELECT $1, 'rk', convert_to('keyed ' || i, 'UTF8'), 'k' || (i % 3) FROM generate_series(1, 15) i`, exchange)
	ids := backlog(t, db, table, exchange, "rk", 45)
	cfg := testConfig(table)
	cfg.Retention = time.Hour
	startRelay(t, db, dsn, url, cfg, func(r *Relay) { r.purgeEvery = 100 * time.Millisecond })
	s.waitDistinct(t, 60, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "every row marked published", func() bool {
		return outboxCount(t, db, table, `published_at IS NOT NULL`) == 60
	})
	// One more row, published after several more claims: the kept ones stay kept.
	last := backlog(t, db, table, exchange, "rk", 1)
	s.waitDistinct(t, 61, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, "the last row marked published", func() bool {
		return outboxCount(t, db, table, `published_at IS NOT NULL`) == 61
	})
	for _, m := range s.messages() {
		if n := s.count(m.MessageId); n != 1 {
			t.Fatalf("message %s published %d times", m.MessageId, n)
		}
	}
	ctx := context.Background()
	st, err := outboxdb.Count(ctx, db, table, 0)
	if err != nil {
		t.Fatal(err)
	}
	sampled, err := outboxdb.Count(ctx, db, table, 100)
	if err != nil {
		t.Fatal(err)
	}
	if *st != (outboxdb.State{}) || sampled.Pending != 0 || sampled.Retrying != 0 || sampled.Dead != 0 {
		t.Errorf("state with only kept rows: %+v, sampled %+v; want all 0", *st, *sampled)
	}
	if held, err := outboxdb.Held(ctx, db, table); err != nil || held != 0 {
		t.Errorf("Held = %d, %v; want 0", held, err)
	}

	// Rows older than the window go at the next purge.
	testenv.Exec(t, db, `UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = ANY($1::uuid[])`, pq.Array(ids[:30]))
	testenv.Eventually(t, 10*time.Second, "old kept rows purged", func() bool {
		return outboxCount(t, db, table, ``) == 31
	})

	// Replay: the 31 rows still kept go out again, as they were.
	seqs := map[string]int64{}
	for _, m := range s.messages() {
		seqs[m.MessageId], _ = m.Headers["x-outbox-seq"].(int64)
	}
	since := outboxdb.Since{Ago: 30 * time.Minute}
	if n, err := outboxdb.Replay(ctx, db, table, since, true); err != nil || n != 31 {
		t.Fatalf("Replay dry run = %d, %v; want 31", n, err)
	}
	if n, err := outboxdb.Replay(ctx, db, table, since, false); err != nil || n != 31 {
		t.Fatalf("Replay = %d, %v; want 31", n, err)
	}
	testenv.Eventually(t, 10*time.Second, "replayed rows published again", func() bool { return s.total() == 61+31 })
	if s.count(last[0]) != 2 {
		t.Errorf("the last row was published %d times in all, want 2", s.count(last[0]))
	}
	for _, m := range s.messages()[61:] {
		if seq, _ := m.Headers["x-outbox-seq"].(int64); seq != seqs[m.MessageId] || s.count(m.MessageId) != 2 {
			t.Errorf("replayed %s: seq %d (first %d), published %d times", m.MessageId, seq, seqs[m.MessageId], s.count(m.MessageId))
		}
	}
}
