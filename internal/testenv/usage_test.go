package testenv

import (
	"os"
	"testing"
	"time"
)

// TestProcessUsage reads the test's own usage: a peak of at least what it holds, and CPU
// time that grows with work done.
func TestProcessUsage(t *testing.T) {
	before, err := ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	held := make([]byte, 32<<20)
	for i := range held {
		held[i] = byte(i)
	}
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	after, err := ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.PeakRSS < int64(len(held)) {
		t.Errorf("peak RSS %d bytes while holding %d", after.PeakRSS, len(held))
	}
	if after.CPU <= before.CPU {
		t.Errorf("CPU time %v after 100 ms of spinning, %v before", after.CPU, before.CPU)
	}
	if _, err := ProcessUsage(-1); err == nil {
		t.Error("usage of pid -1: no error")
	}
	_ = held[len(held)-1]
}
