//go:build !race

package inbox

// raceEnabled reports whether the race detector is on: it multiplies memory use.
const raceEnabled = false
