package relay

import "go.uber.org/zap"

// Batches shrink after a publish timeout. A batch whose confirms do not all arrive
// within PublishTimeout (a slow or congested link, a broker busy writing to disk) is
// published again, all of its unconfirmed rows, while the copies already sent still
// reach the broker: duplicates. Were the next batch as large, it would time out again
// for the same reason, round after round, each round adding to the link's backlog.
// So each timeout halves the rows a batch may take, or brings them down to what was
// confirmed in time when that is fewer, down to one; and each batch
// confirmed in time gives back a fiftieth of BatchSize, until the bound is gone: the
// relay finds the batch size that the link confirms in time.

// publishTimedOut lowers the bound on a batch's rows after a batch of which the broker
// confirmed inTime rows before the timeout: to half the bound, or to inTime when
// fewer, at least 1. It returns the new bound.
func (r *Relay) publishTimedOut(inTime int) int {
	for {
		cur := r.batchCap.Load()
		n := cur
		if n == 0 {
			n = int64(r.cfg.BatchSize)
		}
		next := max(min(n/2, int64(inTime)), 1)
		if r.batchCap.CompareAndSwap(cur, next) {
			return int(next)
		}
	}
}

// publishedInTime raises the bound by a fiftieth of BatchSize; at BatchSize it is gone.
func (r *Relay) publishedInTime() {
	for {
		cur := r.batchCap.Load()
		if cur == 0 {
			return
		}
		next := cur + max(int64(r.cfg.BatchSize)/50, 1)
		if next >= int64(r.cfg.BatchSize) {
			next = 0
		}
		if r.batchCap.CompareAndSwap(cur, next) {
			if next == 0 {
				r.log.Info("confirms arrive in time again; batches back to their full size", zap.Int("batch_size", r.cfg.BatchSize))
			}
			return
		}
	}
}

// answeredIn reports whether the broker answered every row of idx: a confirm, a nack or
// a return, nothing left unknown.
func answeredIn(res []result, idx []int) bool {
	for _, i := range idx {
		if res[i].outcome == unknown {
			return false
		}
	}
	return true
}

// confirmedIn counts the rows of idx that the broker confirmed.
func confirmedIn(res []result, idx []int) int {
	n := 0
	for _, i := range idx {
		if res[i].outcome == confirmed {
			n++
		}
	}
	return n
}
