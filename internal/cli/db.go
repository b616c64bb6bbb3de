package cli

import (
	"fmt"
	"net/url"
	"strconv"
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
	secs := strconv.Itoa(int(defaultConnectTimeout / time.Second))
	if hasURLScheme(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse database URL: %w", err)
		}
		q := u.Query()
		q.Set("connect_timeout", secs)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " connect_timeout=" + secs, nil
}

func hasURLScheme(dsn string) bool {
	u, err := url.Parse(dsn)
	return err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql")
}
