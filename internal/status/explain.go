package status

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// OutboxStates details the states of the outbox table t (count, oldest age, the
// oldest failed rows and why they failed); nil, nil when t does not exist.
func OutboxStates(ctx context.Context, db *sql.DB, t pg.Table) (*outboxdb.States, error) {
	return outboxdb.ReadStates(ctx, db, t)
}

// ExplainOutbox says in words what each state holds and, for failed rows, why the
// oldest failed and what usually fixes it: the lines status prints under the counts.
func ExplainOutbox(s *outboxdb.States) []string {
	if s == nil {
		return nil
	}
	var out []string
	if s.Pending.Count > 0 {
		out = append(out, fmt.Sprintf("pending: %s waiting for their first publish; the oldest has been due for %s",
			rows(s.Pending.Count), Age(s.Pending.OldestAgeSeconds)))
	}
	for _, st := range []struct {
		name string
		d    outboxdb.StateDetail
	}{{"retrying", s.Retrying}, {"dead", s.Dead}} {
		f := st.d.Oldest
		if st.d.Count == 0 || f == nil {
			continue
		}
		what := "failed and will be retried"
		if st.name == "dead" {
			what = "failed for good and are kept, never published again until revived"
		}
		line := fmt.Sprintf("%s: %s %s; the oldest was written %s ago for exchange %q, routing key %q, and failed %s",
			st.name, rows(st.d.Count), what, Age(st.d.OldestAgeSeconds), f.Exchange, f.RoutingKey, times(f.Attempts))
		if st.name == "retrying" {
			if f.NextAttemptInSeconds > 0 {
				line += fmt.Sprintf("; next attempt in %s", Age(f.NextAttemptInSeconds))
			} else {
				line += "; next attempt now"
			}
		}
		out = append(out, line, "    last error: "+f.LastError)
		if h := Hint(f.LastError, f.Exchange); h != "" {
			out = append(out, "    likely fix: "+h)
		}
	}
	return out
}

// Hint suggests the usual fix for a failure reason; "" when there is none to give.
func Hint(reason, exchange string) string {
	switch {
	case strings.Contains(reason, "NO_ROUTE"):
		return fmt.Sprintf("no queue is bound to exchange %q for this routing key: bind one (SIDEBOX_OUTBOX_BINDINGS, or your own topology), or correct the routing key", exchange)
	case strings.Contains(reason, "no exchange"):
		return fmt.Sprintf("exchange %q does not exist: declare it (SIDEBOX_OUTBOX_DECLARE, or your own topology), or correct the row's exchange", exchange)
	case strings.Contains(reason, "nacked"):
		return "the broker refused the message (a queue's length limit with reject-publish, a full disk or an internal error): see RabbitMQ's log and the queues' limits"
	case strings.Contains(reason, "ACCESS_REFUSED"):
		return "the AMQP user may not publish to this exchange: grant it write permission"
	}
	return ""
}

// Age writes seconds as a person reads them: 42s, 10m5s, 3h2m, 2d4h.
func Age(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second)).Round(time.Second)
	switch {
	case d < time.Second:
		return "under a second"
	case d < time.Hour:
		return d.String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}

func rows(n int64) string {
	if n == 1 {
		return "1 row"
	}
	return fmt.Sprintf("%d rows", n)
}

func times(n int) string {
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%d times", n)
}

// sampleOldestRetrying sets sidebox_outbox_oldest_retrying_age_seconds for t, or
// removes it when t does not exist.
func (s *Sampler) sampleOldestRetrying(ctx context.Context, t pg.Table) error {
	age, ok, err := outboxdb.OldestRetryingAge(ctx, s.db, t)
	if err != nil {
		return err
	}
	if !ok {
		s.m.OldestRetrying.DeleteLabelValues(t.String())
		return nil
	}
	s.m.OldestRetrying.WithLabelValues(t.String()).Set(age)
	return nil
}
