package backoff

import "time"

// The reconnect policies of sidebox, named in one place: every loop that reconnects or
// retries after a lost connection takes its policy from here.
const (
	// DatabaseBase and DatabaseMax pace retries after a database error: the relay's
	// claims and settlements, its channel opens, and the inbox consumer's inserts
	// (its default ConsumerConfig.Backoff and BackoffMax).
	DatabaseBase = 100 * time.Millisecond
	DatabaseMax  = 5 * time.Second

	// BrokerBase and BrokerMax pace reconnects of the AMQP connection, over its URLs.
	BrokerBase = 200 * time.Millisecond
	BrokerMax  = 10 * time.Second

	// ListenBase and ListenMax pace reconnects of the relay's LISTEN connection
	// (lib/pq's Listener doubles from the first to the second, without jitter).
	ListenBase = 250 * time.Millisecond
	ListenMax  = 10 * time.Second

	// PollBase and PollMax pace the sidecar's checks for a table that is not there yet.
	PollBase = 250 * time.Millisecond
	PollMax  = 5 * time.Second
)

// Database is the policy of retries after a database error (DatabaseBase, DatabaseMax).
func Database() Policy { return Policy{Base: DatabaseBase, Max: DatabaseMax} }

// Broker is the policy of AMQP reconnects (BrokerBase, BrokerMax).
func Broker() Policy { return Policy{Base: BrokerBase, Max: BrokerMax} }

// Poll is the policy of checks for a missing table (PollBase, PollMax).
func Poll() Policy { return Policy{Base: PollBase, Max: PollMax} }
