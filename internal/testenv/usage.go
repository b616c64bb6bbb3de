package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Usage is what a process has used so far, as Linux's /proc shows it.
type Usage struct {
	PeakRSS int64         // peak resident set size (VmHWM), bytes
	CPU     time.Duration // user + system CPU time (utime + stime)
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, 100 on Linux.
const userHZ = 100

// ProcessUsage reads the peak resident memory and the CPU time of process pid (the
// test's own with os.Getpid()) from /proc/<pid>/status and /proc/<pid>/stat. Read it
// while the process runs: a reaped process has no entry.
func ProcessUsage(pid int) (Usage, error) {
	var u Usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("usage of pid %d: %w", pid, err)
	}
	found := false
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return u, fmt.Errorf("usage of pid %d: VmHWM: %w", pid, err)
			}
			u.PeakRSS, found = kb<<10, true
		}
	}
	if !found {
		return u, fmt.Errorf("usage of pid %d: no VmHWM in its status", pid)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("usage of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are plain.
	// utime and stime are fields 14 and 15 of proc(5), 12 and 13 after the ')'.
	rest := string(stat)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return u, fmt.Errorf("usage of pid %d: short stat %q", pid, stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return u, fmt.Errorf("usage of pid %d: cpu time: %w", pid, err)
		}
		ticks += n
	}
	u.CPU = time.Duration(ticks) * time.Second / userHZ
	return u, nil
}
