package relay

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/outboxdb"
)

// purgeEvery is the pause between purges of rows kept past Config.Retention.
const purgeEvery = time.Minute

// purge deletes the rows kept past Config.Retention, PurgeBatch at a time until none
// is left, every purgeEvery, until ctx is done. A failure is logged and retried at the
// next round: kept rows wait a little longer, nothing else depends on them.
func (r *Relay) purge(ctx context.Context) {
	for {
		total := int64(0)
		for ctx.Err() == nil {
			dbctx, cancel := context.WithTimeout(ctx, dbTimeout)
			n, err := outboxdb.Purge(dbctx, r.db, r.table, r.cfg.Retention)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("cannot purge published outbox rows; retrying later", errField(err))
				}
				break
			}
			total += n
			if n < outboxdb.PurgeBatch {
				break
			}
		}
		if total > 0 {
			r.log.Debug("purged published outbox rows past the retention", zap.Int64("rows", total), zap.Duration("retention", r.cfg.Retention))
		}
		if !r.nextRound(ctx) {
			return
		}
	}
}

// checkLayout returns a *ConfigError (Partitions) when the table exists in the other
// layout than Config.Partitions says. A database that does not answer is waited for;
// a missing table is left to the claim to report.
func (r *Relay) checkLayout(ctx context.Context) error {
	want := outboxdb.NotPartitioned
	if r.partitioned {
		want = outboxdb.Daily
	}
	for attempt := 1; ; attempt++ {
		dbctx, cancel := context.WithTimeout(ctx, dbTimeout)
		err := outboxdb.CheckLayout(dbctx, r.db, r.table, want)
		cancel()
		var le *outboxdb.LayoutError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &le):
			return &ConfigError{Field: "Partitions", Problem: le.Error()}
		}
		r.setDBOK(false)
		r.log.Debug("cannot look up the outbox table's layout; retrying", errField(err))
		if !r.reconnect.Sleep(ctx, attempt) {
			return nil // stopping: Run finds ctx done and returns
		}
	}
}

// maintainPartitions keeps the partitions of a table partitioned by day, at once and
// then every purgeEvery until ctx is done (outboxdb.MaintainPartitions): today's and
// the next days' are made, those past Retention with only published rows dropped. It
// logs what it did and why a partition past the window stays. A failure is logged and
// retried at the next round.
func (r *Relay) maintainPartitions(ctx context.Context) {
	busy := 0
	kept := map[string]string{} // partitions kept, and why, as last logged
	for {
		dbctx, cancel := context.WithTimeout(ctx, dbTimeout)
		m, err := outboxdb.MaintainPartitions(dbctx, r.db, r.table, r.cfg.Retention)
		cancel()
		for _, p := range m.Created {
			r.log.Info("created outbox partition", zap.String("partition", p))
		}
		for _, p := range m.Dropped {
			r.log.Info("dropped outbox partition past the retention", zap.String("partition", p), zap.Duration("retention", r.cfg.Retention))
		}
		for p, why := range m.Kept {
			if kept[p] != why { // once per partition and reason, not every round
				r.log.Info("outbox partition past the retention kept", zap.String("partition", p), zap.String("reason", why))
			}
		}
		if err == nil {
			kept = m.Kept
		}
		for p, why := range m.Skipped {
			r.log.Warn("outbox partition not created", zap.String("partition", p), zap.String("reason", why))
		}
		if m.Purged > 0 {
			r.log.Debug("purged published rows of the default outbox partition past the retention", zap.Int64("rows", m.Purged))
		}
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("cannot maintain the outbox partitions; retrying later", errField(err))
		case m.Busy:
			// Under steady load the table's lock may take a few rounds; say so when
			// it keeps failing.
			if busy++; busy%10 == 0 {
				r.log.Warn("outbox partitions: the table's lock was not granted within a second for several rounds; retrying", zap.Int("rounds", busy))
			}
		default:
			busy = 0
		}
		if !r.nextRound(ctx) {
			return
		}
	}
}

// nextRound waits purgeEvery, the pause between rounds of the purge and of partition
// upkeep; false when ctx is done first.
func (r *Relay) nextRound(ctx context.Context) bool {
	t := time.NewTimer(r.purgeEvery)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
