package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/redact"
)

// listen opens the LISTEN connection for the table's wake-up channel and turns every
// notification into a wake-up. lib/pq's Listener reconnects by itself (with backoff
// between backoff.ListenBase and backoff.ListenMax) and then sends a nil
// notification, which also wakes the relay: notifications may have been missed while
// the connection was down. Dead peers are found by TCP keepalive, which Go enables on
// every connection. The returned function closes the connection.
//
// Whether notifications really arrive is checked, not assumed: a LISTEN through a
// transaction pooler (PgBouncer in transaction mode) succeeds, but the server
// connection it ran on goes back to the pool and the notifications never reach this
// connection. So each time the connection is (re)established the relay notifies
// itself through its pool and waits up to probeTimeout for its own notification.
// Until one arrives, and for as long as the connection is down, wake-ups are polled
// (see the dispatcher); a probe that times out is logged once, with what to do.
// Without a LISTEN URL wake-ups are polled throughout.
func (r *Relay) listen(wake chan<- struct{}) (stop func()) {
	channel := r.table.Channel()
	r.setPolled(true, "") // until a probe shows that notifications arrive
	if r.dsn == "" {
		r.log.Info("no LISTEN connection configured (Config.ListenDatabaseURL); polling for new rows, every few milliseconds while rows come and every poll interval while idle")
		return func() {}
	}
	probes := make(chan struct{}, 1) // the connection is (re)established: probe it
	askProbe := func() {
		select {
		case probes <- struct{}{}:
		default:
		}
	}
	l := pq.NewListener(r.dsn, backoff.ListenBase, backoff.ListenMax, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventConnected:
			r.log.Info("LISTEN connection open", zap.String("channel", channel))
		case pq.ListenerEventReconnected:
			r.log.Info("LISTEN connection open again", zap.String("channel", channel))
			askProbe() // the Listener has issued LISTEN again by now
		case pq.ListenerEventDisconnected:
			r.setPolled(true, "")
			r.log.Warn("lost the LISTEN connection; reconnecting, polling meanwhile", errField(err))
			// Claim now: polling starts at once, and a database that went away shows
			// in readiness without waiting for the poll interval.
			select {
			case wake <- struct{}{}:
			default:
			}
		case pq.ListenerEventConnectionAttemptFailed:
			r.log.Warn("cannot open the LISTEN connection; retrying, polling meanwhile", errField(err))
		}
	})
	done := make(chan struct{})
	echoes := make(chan string, 16) // probe payloads received
	var wg sync.WaitGroup
	wg.Go(func() {
		// Blocks until the first connection is up; the Listener re-issues it after
		// every reconnect.
		if err := l.Listen(channel); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Error("cannot LISTEN for outbox notifications; polling for wake-ups", zap.String("channel", channel), errField(err))
			}
			return
		}
		askProbe()
	})
	wg.Go(func() {
		for n := range l.Notify { // closed by l.Close
			if n != nil && strings.HasPrefix(n.Extra, probePrefix) {
				select {
				case echoes <- n.Extra:
				default:
				}
				continue // a probe, ours or another relay's: nothing to claim
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	})
	wg.Go(func() {
		r.probeLoop(channel, probes, echoes, wake, done)
	})
	return func() {
		close(done)
		_ = l.Close()
		wg.Wait()
	}
}

// probeLoop probes the LISTEN connection whenever it asks, and again after a probe
// that could not be sent (the database was down).
func (r *Relay) probeLoop(channel string, probes <-chan struct{}, echoes <-chan string, wake chan<- struct{}, done <-chan struct{}) {
	var retry <-chan time.Time
	failures := 0
	for {
		select {
		case <-done:
			return
		case <-probes:
		case <-retry:
		}
		retry = nil
		arrived, err := r.probe(channel, echoes, done)
		switch {
		case err != nil:
			failures++
			r.log.Debug("cannot send the LISTEN probe; trying again", errField(err))
			retry = time.After(r.reconnect.Delay(failures))
			continue
		case arrived:
			r.setPolled(false, "")
		default:
			retry = time.After(reprobeInterval) // a slow moment, or a pooler for good
			r.setPolled(true, "notifications do not arrive on the LISTEN connection (a connection pooler in transaction mode?); "+
				"polling for new rows instead, every few milliseconds while rows come and up to SIDEBOX_POLL_INTERVAL while idle")
		}
		failures = 0
		select {
		case wake <- struct{}{}: // the dispatcher adopts the new mode at once
		default:
		}
	}
}

// probe notifies the table's channel through the pool and reports whether the
// notification arrived on the LISTEN connection within probeTimeout.
func (r *Relay) probe(channel string, echoes <-chan string, done <-chan struct{}) (bool, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	payload := probePrefix + hex.EncodeToString(b)
	for drained := false; !drained; { // stale echoes of earlier probes
		select {
		case <-echoes:
		default:
			drained = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
	defer cancel()
	// A plain statement, no parameters: the channel is a validated identifier and the
	// payload hex.
	if _, err := r.db.ExecContext(ctx, "NOTIFY "+channel+", '"+payload+"'"); err != nil {
		return false, err
	}
	t := time.NewTimer(probeTimeout)
	defer t.Stop()
	for {
		select {
		case <-done:
			return false, errors.New("relay stopping")
		case <-t.C:
			return false, nil
		case got := <-echoes:
			if got == payload {
				return true, nil
			}
		}
	}
}

// setPolled records whether wake-ups are polled. warning, when not empty, is logged
// if the mode changes to polled; a return to notifications is logged too.
func (r *Relay) setPolled(polled bool, warning string) {
	was := r.polled.Swap(polled)
	v := 0.0
	if polled {
		v = 1
	}
	r.m.WakeupsPolled.WithLabelValues(r.q.tableName).Set(v)
	switch {
	case polled && warning != "" && !r.probeFailed.Swap(true):
		r.log.Warn(warning, zap.String("channel", r.table.Channel()),
			zap.String("hint", "set SIDEBOX_LISTEN_DATABASE_URL to a direct connection to the database (not through the pooler) for wake-ups within milliseconds; "+
				"meanwhile a message written after an idle spell waits up to SIDEBOX_POLL_INTERVAL"))
	case !polled && was:
		if r.probeFailed.Swap(false) {
			r.log.Info("notifications arrive on the LISTEN connection again; wake-ups by notification")
		} else {
			r.log.Info("listening for outbox notifications", zap.String("channel", r.table.Channel()))
		}
	}
}

const (
	// probeTimeout is how long the relay waits for its own notification.
	probeTimeout = 2 * time.Second
	// reprobeInterval is how often a relay whose probe timed out probes again.
	reprobeInterval = time.Minute
	// probePrefix starts the payload of a probe notification.
	probePrefix = "sidebox-probe:"
)

// errField logs an error with any secret it may quote (a connection string) masked.
func errField(err error) zap.Field {
	return zap.String("error", redact.Text(err.Error()))
}
