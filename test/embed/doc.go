// Package embed proves sidebox's public Go API from outside the sidebox module: its
// tests build an outbox writer, a relay, an inbox consumer, processor and purger from
// the public packages outbox, inbox and relay alone, in a module whose path is not under
// github.com/sidebox/sidebox, so that an import of an internal package would not
// compile.
//
// Run it with `make test` (or `make test-embed`), which supplies the test servers in
// SIDEBOX_TEST_DATABASE_URL and SIDEBOX_TEST_AMQP_URL; without them the tests use the
// local servers on the standard ports.
package embed
