package relay

import (
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// waitIdle waits until the relay sleeps with the wake-up flag up, nothing in flight
// and its settle claim done, woken by notifications: its LISTEN probe succeeded. A
// relay that still polls (its Listener reconnecting, with backoff up to
// backoff.ListenMax) would take up to the poll interval to see a new row.
func waitIdle(t *testing.T, db *sql.DB, r *running) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "the relay to sleep with the wake-up flag up, woken by notifications", func() bool {
		return !r.WakeupsPolled() && wakeFlagValue(t, db) == 1 && r.idle.Load()
	})
}

// A notification wakes a sleeping relay at once: with a poll interval of 30 s, rows
// written one by one arrive within milliseconds.
func TestNotificationWakesSleepingRelay(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "k")

	cfg := testConfig(table)
	cfg.PollInterval = 30 * time.Second
	r := startRelay(t, db, dsn, url, cfg)
	waitIdle(t, db, r)
	claims := r.claims.Load()
	<-time.After(300 * time.Millisecond) // a quiet spell: no polling at all
	if n := r.claims.Load() - claims; n != 0 {
		t.Errorf("idle relay ran %d claims in 300ms with a poll interval of 30s", n)
	}

	const n = 60
	committed := map[string]time.Time{}
	tick := time.NewTicker(20 * time.Millisecond) // 50 msg/s, each in its own transaction
	defer tick.Stop()
	for range n {
		<-tick.C
		id := insertRow(t, db, table, exchange, "k", "ping", nil)
		committed[id] = time.Now()
	}
	s.waitDistinct(t, n, 10*time.Second)
	var lat []time.Duration
	for _, m := range s.messages() {
		if c, ok := committed[m.MessageId]; ok {
			lat = append(lat, m.at.Sub(c))
		}
	}
	slices.Sort(lat)
	p50, p99, worst := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	t.Logf("commit-to-delivery at 50 msg/s: p50 %v, p99 %v, max %v", p50, p99, worst)
	if worst > time.Second {
		t.Errorf("a message took %v to arrive; the notification did not wake the relay", worst)
	}
}

// The wake-up state after a writer took the flag (pure logic, no database). A relay
// whose raised flag was taken, and which then found no rows, leaves the flag alone
// (yield) for as long as it finds none: another relay serves those writers, or the
// taker's notification is on its way. Once it finds rows, it is the one serving, and
// it raises the flag again when it has caught up.
func TestTakenFlagIsRaisedAgainOnlyByTheRelayServingIt(t *testing.T) {
	ctx := t.Context()
	d := &dispatcher{r: &Relay{}, flagSet: true}

	d.sawFlag(ctx, flagTaken) // the claim after the notification found nothing
	if d.flagSet {
		t.Fatal("a taken flag still counts as raised by this relay")
	}
	for round := range 3 {
		if !d.yield() {
			t.Fatalf("round %d: a relay that found no rows since the flag was taken raises it again", round)
		}
		d.sawFlag(ctx, flagTaken+int64(round)) // more writers took it meanwhile
	}

	d.found(time.Time{}, time.Now(), false) // it found the writers' rows
	d.sawFlag(ctx, flagTaken)               // and caught up, the flag still taken
	if d.yield() {
		t.Fatal("the relay that served the writers does not raise the flag once caught up")
	}

	// Raised again, taken again: the relay that last served must find rows anew.
	d.flagSet = true
	d.sawFlag(ctx, flagTaken)
	if !d.yield() {
		t.Fatal("a relay that served an earlier take raises the flag again for a take it has not served")
	}

	// Lowered under a sleeping relay: it yields once, as before.
	d.flagSet = true
	d.sawFlag(ctx, flagDown)
	if !d.yield() || d.yield() {
		t.Fatal("a flag lowered under a sleeping relay: want one yield")
	}
}
