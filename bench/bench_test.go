package bench

import (
	"testing"
)

// Each benchmark does one measured run per iteration (make bench runs -benchtime 1x),
// measures sidebox and its raw reference side by side in that run, reports the figures
// with b.ReportMetric and prints a Markdown table for README.md to standard output.

// BenchmarkRelayDrain: the relay draining 50,000 rows of 256 bytes next to raw amqp091-go
// pipelined confirm publishing to the same queue, a consumer attached.
func BenchmarkRelayDrain(b *testing.B) {
	for range b.N {
		emit(b, benchDrain(b))
	}
}

// BenchmarkRelayLatency: commit-to-delivery latency at 500 msg/s with the default
// configuration, and the statements of an idle relay per poll interval.
func BenchmarkRelayLatency(b *testing.B) {
	for range b.N {
		emit(b, benchLatency(b))
	}
}

// BenchmarkRelayLatencyPgBouncer: commit-to-delivery latency at 500 msg/s through a
// private PgBouncer (transaction mode with polled wake-ups, transaction mode with a
// direct LISTEN connection, session mode) next to the direct path.
func BenchmarkRelayLatencyPgBouncer(b *testing.B) {
	for range b.N {
		emit(b, benchLatencyPooled(b))
	}
}

// BenchmarkWriterWakeup: writers' transactions per second without a wake-up trigger,
// with sidebox's trigger (relay busy, relay asleep) and with a naive NOTIFY trigger.
func BenchmarkWriterWakeup(b *testing.B) {
	for range b.N {
		emit(b, benchWakeup(b))
	}
}

// BenchmarkInboxIngest: the inbox consumer's ingest rate (stored with dedup) next to a raw
// amqp091-go consumer acking in batches, on the same queue.
func BenchmarkInboxIngest(b *testing.B) {
	for range b.N {
		emit(b, benchInbox(b))
	}
}

// BenchmarkRelayBacklog: the relay draining backlogs of 10,000, 1,000,000 and 5,000,000
// rows (SIDEBOX_BENCH_BACKLOGS), with the claim times over each drain.
func BenchmarkRelayBacklog(b *testing.B) {
	for range b.N {
		emit(b, benchBacklog(b))
	}
}

// BenchmarkRelayCatchUp: the relay started after an outage of 5 minutes
// (SIDEBOX_BENCH_OUTAGE) during which a writer committed 1,000 msg/s, and still does.
func BenchmarkRelayCatchUp(b *testing.B) {
	for range b.N {
		emit(b, benchCatchUp(b))
	}
}

// BenchmarkRelayMemory: the peak resident memory of `sidebox relay` draining rows of
// 1 MiB, with and without its byte budget.
func BenchmarkRelayMemory(b *testing.B) {
	for range b.N {
		emit(b, benchMemory(b))
	}
}

// BenchmarkInboxOrderedHotKey: an ordered inbox Processor next to an unordered one on the
// same rows, 99 % of them of one ordering key.
func BenchmarkInboxOrderedHotKey(b *testing.B) {
	for range b.N {
		emit(b, benchInboxHotKey(b))
	}
}

// BenchmarkInboxOrderedClaim: an ordered inbox Processor's claim time at 10,000 and at
// 1,000,000 unprocessed rows with 1 % distinct keys.
func BenchmarkInboxOrderedClaim(b *testing.B) {
	for range b.N {
		emit(b, benchInboxClaim(b))
	}
}
