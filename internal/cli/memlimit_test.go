package cli

import (
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"go.uber.org/zap"
)

// The soft memory limit is process-wide: these tests do not run in parallel and put
// the previous limit back.

func TestSetMemoryLimitFromContainer(t *testing.T) {
	unsetenv(t, "GOMEMLIMIT", "AUTOMEMLIMIT")
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	container := uint64(256 << 20)
	setMemoryLimit(zap.NewNop(), memlimit.Limit(container))
	if got, want := debug.SetMemoryLimit(-1), int64(float64(container)*memoryLimitRatio); got != want {
		t.Errorf("soft memory limit = %d, want %d (90%% of a 256 MiB container)", got, want)
	}
}

func TestSetMemoryLimitKeepsGOMEMLIMIT(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "100MiB")
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	setMemoryLimit(zap.NewNop(), memlimit.Limit(256<<20))
	if got := debug.SetMemoryLimit(-1); got != prev {
		t.Errorf("soft memory limit = %d, want %d: GOMEMLIMIT in the environment wins", got, prev)
	}
}

func TestSetMemoryLimitWithoutContainerLimit(t *testing.T) {
	unsetenv(t, "GOMEMLIMIT", "AUTOMEMLIMIT")
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	setMemoryLimit(zap.NewNop(), func() (uint64, error) { return 0, memlimit.ErrNoLimit })
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("soft memory limit = %d, want none (MaxInt64) when the container has no limit", got)
	}
}

// unsetenv removes the variables for the test and puts them back after it.
func unsetenv(t *testing.T, names ...string) {
	for _, name := range names {
		t.Setenv(name, "") // registers the restore
		os.Unsetenv(name)
	}
}
