//go:build !race

package relay

// raceEnabled reports whether the race detector is on: it multiplies memory use.
const raceEnabled = false
