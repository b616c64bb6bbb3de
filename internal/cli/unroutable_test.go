package cli_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// Rows returned as unroutable explain themselves: one WARN line per exchange and
// routing key naming the broker's reason, and status (--json and the table) shows the
// oldest retrying row's last error with the usual fix.
func TestUnroutableRowsExplainThemselves(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	exchange := testenv.Name(t, "cli_unroutable")
	cleanupTopology(t, []string{exchange}, nil)
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_OUTBOX_DECLARE=" + exchange, // exists, but nothing is bound to it
		"SIDEBOX_RETRY_BACKOFF=50ms",
		"SIDEBOX_RETRY_BACKOFF_MAX=100ms",
		"SIDEBOX_MAX_ATTEMPTS=100000", // retrying, never dead, while the test looks
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) SELECT $1, 'order.created', convert_to(g::text, 'UTF8') FROM generate_series(1, 3) g`, exchange)
	d := start(t, vars, "relay")
	testenv.Eventually(t, 20*time.Second, "every row failed three times", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE attempts >= 3`) == 3
	})
	var warns []string
	for line := range strings.SplitSeq(d.log(), "\n") {
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "NO_ROUTE") {
			warns = append(warns, line)
		}
	}
	if len(warns) != 1 {
		t.Fatalf("%d WARN lines with NO_ROUTE, want 1:\n%s", len(warns), strings.Join(warns, "\n"))
	}
	for _, want := range []string{`"exchange":"` + exchange + `"`, `"routing_key":"order.created"`, `312 NO_ROUTE`} {
		if !strings.Contains(warns[0], want) {
			t.Errorf("WARN line lacks %s: %s", want, warns[0])
		}
	}

	r := run(t, vars, "status", "--json")
	var rep struct {
		Outbox struct {
			Retrying int64 `json:"retrying"`
			States   struct {
				Retrying struct {
					Count            int64   `json:"count"`
					OldestAgeSeconds float64 `json:"oldest_age_seconds"`
					Oldest           struct {
						Exchange   string
						LastError  string `json:"last_error"`
						RoutingKey string `json:"routing_key"`
						Attempts   int
					} `json:"oldest"`
				} `json:"retrying"`
			} `json:"states"`
		} `json:"outbox"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 {
		t.Fatalf("status --json: %v\n%s", err, r)
	}
	st := rep.Outbox.States.Retrying
	if rep.Outbox.Retrying != 3 || st.Count != 3 || st.OldestAgeSeconds <= 0 || st.Oldest.Exchange != exchange ||
		st.Oldest.RoutingKey != "order.created" || st.Oldest.Attempts < 3 || !strings.Contains(st.Oldest.LastError, "312 NO_ROUTE") {
		t.Errorf("status --json: %+v\n%s", rep.Outbox, r.stdout)
	}
	r = run(t, vars, "status")
	for _, want := range []string{"retrying: 3 rows failed and will be retried; the oldest was written", "last error: returned by the broker: 312 NO_ROUTE",
		`likely fix: no queue is bound to exchange "` + exchange + `"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
}
