package cli

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

// defaultConnectTimeout bounds each connection attempt to PostgreSQL, TCP connect and
// start-up handshake together, unless the connection string sets connect_timeout.
// lib/pq honours a context only while dialling, so without it a server that accepts
// the connection and never answers would hang the caller.
const defaultConnectTimeout = 10 * time.Second

// withConnectTimeout returns dsn (URL or key=value form) with connect_timeout set to
// defaultConnectTimeout when it sets none.
func withConnectTimeout(dsn string) (string, error) {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("parse database connection string: %w", err)
	}
	if cfg.ConnectTimeout > 0 {
		return dsn, nil
	}
	return withParam(dsn, "connect_timeout", strconv.Itoa(int(defaultConnectTimeout/time.Second)))
}

// withSessionDefaults returns dsn with the session settings of a long-running sidecar,
// each only where the connection string does not set it already:
//   - application_name=sidebox, so its sessions are easy to find in pg_stat_activity;
//   - idle_in_transaction_session_timeout above the longest a healthy batch waits for
//     the broker's confirms (busy), so that a relay cut off from its database does not
//     hold row locks until TCP notices: the server ends the session, the locks go, and
//     the rows are published again later (duplicates, never losses).
func withSessionDefaults(dsn string, busy time.Duration) (string, error) {
	idle := strconv.FormatInt((busy + 30*time.Second).Milliseconds(), 10)
	for _, p := range [][2]string{{"application_name", "sidebox"}, {"idle_in_transaction_session_timeout", idle}} {
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
