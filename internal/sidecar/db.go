package sidecar

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

// DSN returns a connection string (URL or key=value form) with the settings every
// sidebox connection gets: connect_timeout (ConnectTimeout, unless set) and the session
// defaults of withSessionDefaults.
func DSN(dsn string) (string, error) {
	bounded, err := withConnectTimeout(dsn)
	if err != nil {
		return "", err
	}
	return withSessionDefaults(bounded)
}

// ConnectTimeout bounds each connection attempt to PostgreSQL, TCP connect and
// start-up handshake together, unless the connection string sets connect_timeout.
// lib/pq honours a context only while dialling, so without it a server that accepts
// the connection and never answers would hang the caller.
const ConnectTimeout = 10 * time.Second

// withConnectTimeout returns dsn (URL or key=value form) with connect_timeout set to
// ConnectTimeout when it sets none.
func withConnectTimeout(dsn string) (string, error) {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("parse database connection string: %w", err)
	}
	if cfg.ConnectTimeout > 0 {
		return dsn, nil
	}
	return withParam(dsn, "connect_timeout", strconv.Itoa(int(ConnectTimeout/time.Second)))
}

// withSessionDefaults returns dsn with the connection settings of a long-running
// sidecar, each only where the connection string does not set it already:
//   - application_name=sidebox, so its sessions are easy to find in pg_stat_activity
//     (a startup parameter that PgBouncer and other poolers accept and pass on);
//   - binary_parameters=yes, a lib/pq setting that is not sent to the server: a query
//     with arguments goes out as one Parse/Bind/Execute/Sync. Without it lib/pq sends
//     Parse/Describe/Sync and then Bind/Execute/Sync, and a transaction pooler may run
//     the second half on another server connection than the first, where the unnamed
//     statement is missing or is another client's.
//
// No other server setting is passed at startup: PgBouncer refuses startup parameters
// it does not know (idle_in_transaction_session_timeout among them) with "unsupported
// startup parameter". Session settings are applied inside the transactions that need
// them (SET LOCAL), which every pooler passes through.
func withSessionDefaults(dsn string) (string, error) {
	for _, p := range [][2]string{{"application_name", "sidebox"}, {"binary_parameters", "yes"}} {
		set, err := hasParam(dsn, p[0])
		if err != nil {
			return "", err
		}
		if set {
			continue
		}
		if dsn, err = withParam(dsn, p[0], p[1]); err != nil {
			return "", err
		}
	}
	return dsn, nil
}

// withParam adds key=value to a URL's query or to a key=value connection string.
func withParam(dsn, key, value string) (string, error) {
	if hasURLScheme(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse database URL: %w", err)
		}
		q := u.Query()
		q.Set(key, value)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " " + key + "=" + value, nil
}

// hasParam reports whether the connection string sets key.
func hasParam(dsn, key string) (bool, error) {
	if hasURLScheme(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return false, fmt.Errorf("parse database URL: %w", err)
		}
		return u.Query().Has(key), nil
	}
	for _, f := range strings.Fields(dsn) {
		if k, _, ok := strings.Cut(f, "="); ok && strings.TrimSpace(k) == key {
			return true, nil
		}
	}
	return false, nil
}

func hasURLScheme(dsn string) bool {
	u, err := url.Parse(dsn)
	return err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql")
}
