// Package testenv provides the servers that sidebox's tests run against.
//
// Shared servers: [DatabaseURL] and [DB] create a fresh database per test on the
// PostgreSQL server named by SIDEBOX_TEST_DATABASE_URL (else 127.0.0.1:5432, else the
// private instance of deploy/servers.sh on 127.0.0.1:55432); [AMQPURL] returns the
// RabbitMQ URL from SIDEBOX_TEST_AMQP_URL (else 127.0.0.1:5672, else 127.0.0.1:55672).
// Tests sharing a broker keep apart by naming their queues and exchanges with [Name].
//
// Private servers for fault tests: [StartPostgres] and [StartRabbitMQ] run a server of
// their own from the local binaries, on free ports with a temporary data directory,
// that a test may stop, kill and start again; it is removed in t.Cleanup. [Proxy] puts
// an in-process toxiproxy in front of any TCP address to cut or stall connections.
// [StartPgBouncer] runs a private PgBouncer (Debian's pgbouncer) in transaction or
// session mode in front of the test PostgreSQL, killed in t.Cleanup.
//
// A missing server or binary fails the test with a message saying to run `make test`,
// whose setup (deploy/servers.sh up) installs and starts what is missing. Messages
// never show passwords: URLs go through [Redacted].
package testenv
