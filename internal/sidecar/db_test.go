package sidecar

import (
	"database/sql"
	"strings"
	"testing"

	_ "github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/testenv"
)

func TestSessionDefaultsFillOnlyWhatIsUnset(t *testing.T) {
	cases := []struct{ in, want, keep string }{
		{"postgres://app@db/orders?sslmode=disable", "binary_parameters=yes", "sslmode=disable"},
		{"postgres://app@db/orders?application_name=billing", "application_name=billing", "binary_parameters=yes"},
		{"host=db dbname=orders", "application_name=sidebox", "binary_parameters=yes"},
		{"host=db binary_parameters=no", "binary_parameters=no", "application_name=sidebox"},
	}
	for _, c := range cases {
		got, err := withSessionDefaults(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		for _, want := range []string{c.want, c.keep} {
			if !strings.Contains(got, want) {
				t.Errorf("withSessionDefaults(%q) = %q, lacks %s", c.in, got, want)
			}
		}
		if n := strings.Count(got, "application_name") + strings.Count(got, "binary_parameters"); n != 2 {
			t.Errorf("withSessionDefaults(%q) = %q: a setting is missing or doubled", c.in, got)
		}
		if strings.Contains(got, "idle_in_transaction_session_timeout") {
			t.Errorf("withSessionDefaults(%q) = %q: a startup parameter poolers refuse", c.in, got)
		}
	}
}

// The settings reach the server, directly and through PgBouncer in transaction mode
// with its default configuration, which refuses startup parameters it does not know.
func TestSessionDefaultsReachTheServer(t *testing.T) {
	direct := testenv.DatabaseURL(t)
	bouncer := testenv.StartPgBouncer(t, direct, testenv.PoolTransaction)
	for name, u := range map[string]string{"direct": direct, "pgbouncer": bouncer.URL(direct)} {
		dsn, err := withSessionDefaults(u)
		if err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var app string
		var one []byte
		if err := db.QueryRow(`SELECT current_setting('application_name'), $1::bytea`, []byte{0, 1}).Scan(&app, &one); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if app != "sidebox" || string(one) != "\x00\x01" {
			t.Errorf("%s: application_name = %q, bytea = %q; want sidebox, \\x0001", name, app, one)
		}
	}
}
