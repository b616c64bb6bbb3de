package pg

import (
	"database/sql"
	"time"
)

// SidecarIdleConns is how many idle connections a sidecar keeps: one per relay and inbox
// worker, plus a few for the status sampler, readiness pings, retention and table checks.
func SidecarIdleConns(relayWorkers, inboxWorkers int) int {
	return relayWorkers + inboxWorkers + 4
}

// TunePool keeps idle connections for that many concurrent users. database/sql keeps
// only two by default: a busy relay with more batches in flight would then open a new
// connection for nearly every batch, and prepare its statements on it again, which
// costs milliseconds per message at moderate rates.
func TunePool(db *sql.DB, idle int) {
	db.SetMaxIdleConns(idle)
	db.SetConnMaxIdleTime(5 * time.Minute)
}
