package relay

import (
	"cmp"
	"slices"
)

// A batch holds runs: for each ordering key in it, the key's consecutive due rows from
// its head on (internal/outboxdb's claim). A run is published pipelined in seq order
// on the batch's one channel, and RabbitMQ keeps a channel's publish order into a
// queue. Only a run's confirmed prefix is settled as published:
//
//   - the first row of a run that is not confirmed keeps its own outcome: returned or
//     nacked, it records an attempt and blocks its key (retrying, then dead); without a
//     confirm, it stays as it was;
//   - every later row of its run stays in the outbox as it was, whatever the broker said
//     about it (confirmed too: put back), and burns no attempt. Once the failed row is
//     published, they are published again after it, in seq order: a consumer may have
//     seen them before the failed row, and then sees them again after it (duplicates,
//     which the inbox absorbs), so the last message it receives for the key is the
//     newest.
//
// Deleting the confirmed later rows instead would make the failed row, when it finally
// goes, the last message of its key: a consumer that keeps the latest state per key
// would end with an old one.

// orderRuns sorts the batch's keyed rows by seq, ahead of its unkeyed rows, which keep
// their claim order.
func orderRuns(rows []row) {
	slices.SortStableFunc(rows, func(a, b row) int {
		switch {
		case a.keyed && b.keyed:
			return cmp.Compare(a.seq, b.seq)
		case a.keyed:
			return -1
		case b.keyed:
			return 1
		}
		return 0
	})
}

// settleRuns keeps only each run's confirmed prefix settled: every row of a key after
// its first row that is not confirmed is put back (unknown). rows are in seq order per
// key (orderRuns). It returns how many confirmed rows it put back.
func settleRuns(rows []row, res []result) (putBack int) {
	broken := map[string]bool{}
	for i := range rows {
		if !rows[i].keyed {
			continue
		}
		k := rows[i].orderingKey
		switch {
		case broken[k]:
			if res[i].outcome == confirmed {
				putBack++
			}
			res[i] = result{}
		case res[i].outcome != confirmed:
			broken[k] = true
		}
	}
	return putBack
}

// runGate tracks, while a batch is published, which keys have started and where a key
// is held: the rows of a held key from the held row on are not published (they stay as
// they are), so that none overtakes a row of its key that did not go; the rows before
// it go as usual.
type runGate struct {
	startedKeys map[string]bool
	heldFrom    map[string]int64 // key: seq of the held row
}

func (g *runGate) start(rw row) {
	if rw.keyed {
		if g.startedKeys == nil {
			g.startedKeys = map[string]bool{}
		}
		g.startedKeys[rw.orderingKey] = true
	}
}

func (g *runGate) started(rw row) bool { return rw.keyed && g.startedKeys[rw.orderingKey] }

// hold holds rw's key from rw on (from the earliest row held, when held twice).
func (g *runGate) hold(rw row) {
	if !rw.keyed {
		return
	}
	if g.heldFrom == nil {
		g.heldFrom = map[string]int64{}
	}
	if from, ok := g.heldFrom[rw.orderingKey]; !ok || rw.seq < from {
		g.heldFrom[rw.orderingKey] = rw.seq
	}
}

// held reports whether rw is at or after the held row of its key.
func (g *runGate) held(rw row) bool {
	if !rw.keyed {
		return false
	}
	from, ok := g.heldFrom[rw.orderingKey]
	return ok && rw.seq >= from
}

// drop returns idx without the rows that are held.
func (g *runGate) drop(rows []row, idx []int) []int {
	return slices.DeleteFunc(idx, func(i int) bool { return g.held(rows[i]) })
}
