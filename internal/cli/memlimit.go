package cli

import (
	"math"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"go.uber.org/zap"
)

// memoryLimitRatio is the share of the container's memory limit given to the Go
// runtime as its soft limit: the rest is for what the runtime does not count (stacks
// of cgo, the binary, page cache charged to the container).
const memoryLimitRatio = 0.9

// setMemoryLimit gives the Go runtime a soft memory limit of memoryLimitRatio of the
// limit that provider reports (the container's cgroup in production), unless the
// environment sets GOMEMLIMIT, or AUTOMEMLIMIT=off. Without it the runtime lets the
// heap grow to twice what is live before it collects, and a large message received
// by the inbox (the AMQP client grows its body by appending) can take the process
// past the container's limit although what is live fits. No limit found is not an
// error: the runtime keeps its default.
func setMemoryLimit(log *zap.Logger, provider memlimit.Provider) {
	limit, err := memlimit.Set(memlimit.WithRatio(memoryLimitRatio), memlimit.WithProvider(provider))
	switch {
	case err != nil:
		log.Warn("could not read the container's memory limit; the Go runtime keeps no soft limit", zap.Error(err))
	case limit > 0 && limit < math.MaxInt64:
		log.Info("Go runtime soft memory limit", zap.Int64("gomemlimit_bytes", limit))
	}
}
