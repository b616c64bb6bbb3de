package bench

import (
	"os"
	"strconv"
	"testing"
)

// Sizes of the side-by-side and scale benchmarks; make bench runs the defaults, a
// quicker run while developing sets smaller ones: SIDEBOX_BENCH_ROUNDS (rounds of every
// interleaved comparison, default 3), SIDEBOX_BENCH_PEER_ROWS (rows per drain of
// BenchmarkPeer and BenchmarkRelayScale, default 50,000), SIDEBOX_BENCH_USAGE_ROWS (rows
// the relay process drains for its RSS and CPU time, default 100,000),
// SIDEBOX_BENCH_FAST_SECONDS (seconds of load at 2,000 msg/s, default 10).
func benchRounds() int     { return envInt("SIDEBOX_BENCH_ROUNDS", 3) }
func peerRows() int        { return envInt("SIDEBOX_BENCH_PEER_ROWS", drainRows) }
func usageRows() int       { return envInt("SIDEBOX_BENCH_USAGE_ROWS", 100_000) }
func fastLoadSeconds() int { return envInt("SIDEBOX_BENCH_FAST_SECONDS", 10) }

// envInt reads a positive integer from the environment, def when unset or not one.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkPeer: the relay next to the Watermill forwarder (at its default poll
// interval and at 10 ms) and raw amqp091-go, interleaved in one run: drain, then
// commit-to-delivery latency at 500 msg/s with each one's idle statement rate.
func BenchmarkPeer(b *testing.B) {
	for range b.N {
		emit(b, benchPeer(b))
	}
}
