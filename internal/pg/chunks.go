package pg

import "runtime"

// Chunk is the most bytes of a large value (a payload of tens of MiB) sent or read
// per round trip: lib/pq holds a whole protocol message in memory, in hex when a value
// goes as text.
const Chunk = 4 << 20

// collectEvery is how many bytes of a large value pass through lib/pq's buffers
// between two garbage collections; see Collect.
const collectEvery = 32 << 20

// Collect runs a garbage collection after every 32 MiB of a large value moved in
// chunks, done being the bytes moved so far and n the last chunk's. Every chunk
// passes through a buffer of lib/pq's own, garbage once it is sent or copied: with the
// whole value live, the collector's default pacing would let that garbage grow to the
// value's size again before it ran. A large value holds no pointers, so a collection
// takes milliseconds.
func Collect(done, n int) {
	if done/collectEvery != (done-n)/collectEvery {
		runtime.GC()
	}
}
