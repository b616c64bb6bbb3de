package cli

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/testenv"
)

func TestSessionDefaultsFillOnlyWhatIsUnset(t *testing.T) {
	cases := []struct{ in, want, keep string }{
		{"postgres://app@db/orders?sslmode=disable", "idle_in_transaction_session_timeout=60000", "sslmode=disable"},
		{"postgres://app@db/orders?application_name=billing", "application_name=billing", "idle_in_transaction_session_timeout=60000"},
		{"host=db dbname=orders", "application_name=sidebox", "idle_in_transaction_session_timeout=60000"},
		{"host=db idle_in_transaction_session_timeout=5000", "idle_in_transaction_session_timeout=5000", "application_name=sidebox"},
	}
	for _, c := range cases {
		got, err := withSessionDefaults(c.in, 30*time.Second)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		for _, want := range []string{c.want, c.keep} {
			if !strings.Contains(got, want) {
				t.Errorf("withSessionDefaults(%q) = %q, lacks %s", c.in, got, want)
			}
		}
		if n := strings.Count(got, "application_name") + strings.Count(got, "idle_in_transaction_session_timeout"); n != 2 {
			t.Errorf("withSessionDefaults(%q) = %q: a setting is missing or doubled", c.in, got)
		}
	}
}

// The settings reach the server: a sidecar's sessions carry them.
func TestSessionDefaultsReachTheServer(t *testing.T) {
	dsn, err := withSessionDefaults(testenv.DatabaseURL(t), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var app, idle string
	if err := db.QueryRow(`SELECT current_setting('application_name'), current_setting('idle_in_transaction_session_timeout')`).Scan(&app, &idle); err != nil {
		t.Fatal(err)
	}
	if app != "sidebox" || idle != "1min" {
		t.Errorf("application_name = %q, idle_in_transaction_session_timeout = %q; want sidebox, 1min", app, idle)
	}
}
