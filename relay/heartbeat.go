package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
)

// heartbeatEvery is how often a relay records itself in the table's heartbeat table
// (<table>_relays) for `sidebox status`: instances seen in the last minute and the rows
// they published over it. Six buckets of it make the minute.
const heartbeatEvery = 10 * time.Second

// beats is the relay's heartbeat state.
type beats struct {
	instance  string       // host:pid:random, unique per Relay
	published atomic.Int64 // rows published since start; the workers add to it
}

func newBeats() beats {
	host, _ := os.Hostname()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return beats{instance: fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))}
}

// heartbeat records the relay every heartbeatEvery until ctx is done, then removes its
// row. Failures never stop the relay: a missing heartbeat table (an outbox migrated by
// an older sidebox) is logged once, other errors at debug level.
func (r *Relay) heartbeat(ctx context.Context) {
	var minute [6]int64 // rows published in each of the last six periods
	last, i := int64(0), 0
	warned := false
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for n := 0; ; n++ {
		total := r.beats.published.Load()
		minute[i%len(minute)] = total - last
		last, i = total, i+1
		var sum int64
		for _, v := range minute {
			sum += v
		}
		bctx, cancel := context.WithTimeout(ctx, dbTimeout)
		err := outboxdb.Beat(bctx, r.db, r.table, r.beats.instance, sum, n%60 == 0)
		cancel()
		switch {
		case errors.Is(err, outboxdb.ErrNoHeartbeatTable) && !warned:
			warned = true
			r.log.Info("no relay heartbeat table; `sidebox status` cannot count this relay until `sidebox migrate up` runs", errField(err))
		case err != nil && ctx.Err() == nil:
			r.log.Debug("cannot record the relay heartbeat", errField(err))
		}
		select {
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := outboxdb.Leave(lctx, r.db, r.table, r.beats.instance); err != nil && !errors.Is(err, outboxdb.ErrNoHeartbeatTable) {
				r.log.Debug("cannot remove the relay heartbeat", errField(err))
			}
			return
		case <-t.C:
		}
	}
}
