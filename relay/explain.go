package relay

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// failureWarnEvery is how often at most one exchange and routing key gets a WARN line
// for a row's first failure; the rows between are counted in the next line.
const failureWarnEvery = time.Minute

// maxWarnKeys bounds the exchange and routing key pairs the limiter remembers; past it,
// pairs not warned about within failureWarnEvery are forgotten.
const maxWarnKeys = 10_000

// warnLimiter lets through one event per key per interval and counts the others.
type warnLimiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[warnKey]*warnState
}

type warnKey struct{ exchange, routingKey string }

type warnState struct {
	last       time.Time
	suppressed int
}

func newWarnLimiter(every time.Duration, now func() time.Time) *warnLimiter {
	return &warnLimiter{every: every, now: now, keys: map[warnKey]*warnState{}}
}

// allow reports whether an event for (exchange, routingKey) may be logged now and, if
// so, how many were held back since the last one that was.
func (l *warnLimiter) allow(exchange, routingKey string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	k := warnKey{exchange, routingKey}
	st := l.keys[k]
	if st != nil && now.Sub(st.last) < l.every {
		st.suppressed++
		return false, 0
	}
	if st == nil {
		if len(l.keys) >= maxWarnKeys {
			l.forget(now)
		}
		st = &warnState{}
		l.keys[k] = st
	}
	suppressed, st.suppressed, st.last = st.suppressed, 0, now
	return true, suppressed
}

// forget drops the pairs whose interval has passed.
func (l *warnLimiter) forget(now time.Time) {
	for k, st := range l.keys {
		if now.Sub(st.last) >= l.every {
			delete(l.keys, k)
		}
	}
}

// logRetry logs a failed row that will be retried: WARN at its first failure (at most
// once per exchange and routing key per failureWarnEvery), naming the exchange, the
// routing key and the broker's reason; DEBUG afterwards, since status and the
// retrying gauges keep showing it.
func (r *Relay) logRetry(attempts int, exchange, routingKey string, fields []zap.Field) {
	if attempts == 1 {
		if ok, held := r.warns.allow(exchange, routingKey); ok {
			if held > 0 {
				fields = append(fields, zap.Int("similar_not_logged", held))
			}
			r.log.Warn("the broker did not take an outbox row; it will be retried with backoff (`sidebox status` shows the reason; one line per exchange and routing key a minute)", fields...)
			return
		}
	}
	r.log.Debug("publishing an outbox row failed again; it will be retried", fields...)
}
