package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq" // the "postgres" driver
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/redact"
)

// Environment variables naming the shared test servers (set by deploy/servers.sh up).
const (
	EnvDatabaseURL = "SIDEBOX_TEST_DATABASE_URL"
	EnvAMQPURL     = "SIDEBOX_TEST_AMQP_URL"
)

// Where the servers are looked for when the variables are unset: the standard ports
// first, then the private instances that deploy/servers.sh starts.
const (
	sharedDatabaseURL  = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	privateDatabaseURL = "postgres://postgres@127.0.0.1:55432/postgres?sslmode=disable"
	sharedAMQPURL      = "amqp://guest:guest@127.0.0.1:5672/"
	privateAMQPURL     = "amqp://guest:guest@127.0.0.1:55672/"
)

// probeTimeout bounds one attempt to reach a shared server.
const probeTimeout = 5 * time.Second

// DatabaseURL creates a fresh, empty database for this test on the test PostgreSQL
// server, drops it in t.Cleanup, and returns its URL (same form as the server's: a
// postgres:// URL or a key=value DSN). The server is the one in
// SIDEBOX_TEST_DATABASE_URL, else the first that answers of 127.0.0.1:5432 and
// 127.0.0.1:55432; the test fails when there is none.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, server, err := openServer(ctx)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer admin.Close()

	name := Name(t, "sidebox_test")
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database %s on %s: %v", name, Redacted(server), err)
	}
	t.Cleanup(func() {
		if err := dropDatabase(server, name); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	u, err := withDatabase(server, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return u
}

// DB opens a fresh database from [DatabaseURL] with lib/pq and returns it with its URL.
// The handle is closed in t.Cleanup, before the database is dropped.
func DB(t testing.TB) (*sql.DB, string) {
	t.Helper()
	u := DatabaseURL(t)
	db, err := sql.Open("postgres", u)
	if err != nil {
		t.Fatalf("testenv: open %s: %v", Redacted(u), err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("testenv: connect %s: %v", Redacted(u), err)
	}
	return db, u
}

// openServer connects to the server's maintenance database.
func openServer(ctx context.Context) (*sql.DB, string, error) {
	candidates := []string{sharedDatabaseURL, privateDatabaseURL}
	if v := os.Getenv(EnvDatabaseURL); v != "" {
		candidates = []string{v}
	}
	var errs []error
	for _, u := range candidates {
		db, err := sql.Open("postgres", u)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			err = db.PingContext(pctx)
			cancel()
			if err == nil {
				return db, u, nil
			}
			_ = db.Close()
		}
		errs = append(errs, fmt.Errorf("%s: %w", Redacted(u), err))
	}
	return nil, "", fmt.Errorf("no test PostgreSQL server (%w); set %s or %s",
		errors.Join(errs...), EnvDatabaseURL, setupHint)
}

// dropDatabase drops name, disconnecting whoever still uses it.
func dropDatabase(server, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sql.Open("postgres", server)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s on %s: %w", name, Redacted(server), err)
	}
	return nil
}

// withDatabase returns the server URL or DSN with its database replaced by name.
func withDatabase(server, name string) (string, error) {
	if strings.HasPrefix(server, "postgres://") || strings.HasPrefix(server, "postgresql://") {
		u, err := url.Parse(server)
		if err != nil {
			return "", fmt.Errorf("parse %s: %w", Redacted(server), err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// lib/pq key=value form: a later key overrides an earlier one.
	return strings.TrimSpace(server) + " dbname=" + name, nil
}

// AMQPURL returns the URL of the test RabbitMQ broker: SIDEBOX_TEST_AMQP_URL, else the
// first that answers of 127.0.0.1:5672 and 127.0.0.1:55672 (guest/guest). The test
// fails when the broker does not accept an AMQP connection. Name queues and exchanges
// with [Name]: the broker is shared by all tests.
func AMQPURL(t testing.TB) string {
	t.Helper()
	candidates := []string{sharedAMQPURL, privateAMQPURL}
	if v := os.Getenv(EnvAMQPURL); v != "" {
		candidates = []string{v}
	}
	var errs []error
	for _, u := range candidates {
		err := probeAMQP(u, probeTimeout)
		if err == nil {
			return u
		}
		errs = append(errs, fmt.Errorf("%s: %w", Redacted(u), err))
	}
	t.Fatalf("testenv: no test RabbitMQ broker (%v); set %s or %s", errors.Join(errs...), EnvAMQPURL, setupHint)
	return ""
}

// probeAMQP opens and closes one AMQP connection.
func probeAMQP(u string, timeout time.Duration) error {
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(timeout)})
	if err != nil {
		return err
	}
	_ = conn.Close()
	return nil
}

// Name returns a unique lower-case name, prefix_<12 hex digits>, for a queue, an
// exchange, a table or a database. prefix is lower-cased and must then be an SQL
// identifier of at most 50 characters ([a-z_][a-z0-9_]*), so the result is one too.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	p := strings.ToLower(prefix)
	if !validPrefix(p) {
		t.Fatalf("testenv: Name: prefix %q is not an SQL identifier of at most 50 characters", prefix)
	}
	return p + "_" + randomHex(6)
}

func validPrefix(p string) bool {
	if p == "" || len(p) > 50 || (p[0] >= '0' && p[0] <= '9') {
		return false
	}
	for _, c := range p {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// Redacted returns a URL or a key=value DSN with its secrets masked, as
// [redact.URL] does. Use it whenever a test prints a server address.
func Redacted(s string) string { return redact.URL(s) }
