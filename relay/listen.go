package relay

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/lib/pq"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/redact"
)

// listen opens the LISTEN connection for the table's wake-up channel and turns every
// notification into a wake-up. lib/pq's Listener reconnects by itself (with backoff
// between listenMinReconnect and listenMaxReconnect) and then sends a nil
// notification, which also wakes the relay: notifications may have been missed while
// the connection was down. Dead peers are found by TCP keepalive, which Go enables on
// every connection. The returned function closes the connection.
func (r *Relay) listen(wake chan<- struct{}) (stop func()) {
	channel := r.cfg.Table.Channel()
	l := pq.NewListener(r.dsn, listenMinReconnect, listenMaxReconnect, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventConnected, pq.ListenerEventReconnected:
			r.listening.Store(true)
			r.updateUp()
			r.log.Info("listening for outbox notifications", zap.String("channel", channel))
		case pq.ListenerEventDisconnected:
			r.listening.Store(false)
			r.updateUp()
			r.log.Warn("lost the LISTEN connection; reconnecting", errField(err))
		case pq.ListenerEventConnectionAttemptFailed:
			r.log.Warn("cannot open the LISTEN connection; retrying", errField(err))
		}
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Blocks until the first connection is up; the Listener re-issues it after
		// every reconnect.
		if err := l.Listen(channel); err != nil && !errors.Is(err, net.ErrClosed) {
			r.log.Error("cannot LISTEN for outbox notifications; relying on polling", zap.String("channel", channel), errField(err))
		}
	})
	wg.Go(func() {
		for range l.Notify { // closed by l.Close
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	})
	return func() {
		_ = l.Close()
		wg.Wait()
		r.listening.Store(false)
	}
}

const (
	listenMinReconnect = 250 * time.Millisecond
	listenMaxReconnect = 10 * time.Second
)

// errField logs an error with any secret it may quote (a connection string) masked.
func errField(err error) zap.Field {
	return zap.String("error", redact.Text(err.Error()))
}
