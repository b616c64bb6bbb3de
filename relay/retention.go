package relay

import (
	"context"
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
		t := time.NewTimer(r.purgeEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
