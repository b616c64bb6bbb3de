package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuTimes is the CPU time (user + system) used so far by the benchmark process,
// RabbitMQ and PostgreSQL on this machine.
type cpuTimes struct {
	bench, rabbit, postgres time.Duration
}

// readCPU reads cpuTimes from /proc: every beam.smp process is RabbitMQ's, every
// postgres process PostgreSQL's, and the postmaster's cutime and cstime add what its
// backends that exited used (it reaps them). Other servers of the same kind running on
// the machine are counted too.
func readCPU() (cpuTimes, error) {
	var t cpuTimes
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return t, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // the process ended
		}
		s := string(data)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		comm := s[open+1 : end]
		// After the ')': state ppid ... utime (12) stime (13) cutime (14) cstime (15).
		f := strings.Fields(s[end+1:])
		if len(f) < 14 {
			continue
		}
		ticks := func(i int) time.Duration {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			return time.Duration(n) * time.Second / 100 // USER_HZ
		}
		pid, _ := strconv.Atoi(s[:open-1])
		switch {
		case pid == self:
			t.bench += ticks(11) + ticks(12)
		case comm == "beam.smp":
			t.rabbit += ticks(11) + ticks(12)
		case comm == "postgres":
			t.postgres += ticks(11) + ticks(12)
			if ppid, _ := strconv.Atoi(f[1]); !isPostgres(ppid) {
				t.postgres += ticks(13) + ticks(14)
			}
		}
	}
	return t, nil
}

// isPostgres reports whether process pid is a postgres process.
func isPostgres(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(comm)) == "postgres"
}

// cpuUse sums the CPU time of runs of one kind and the messages they moved.
type cpuUse struct {
	t    cpuTimes
	msgs int
	wall time.Duration
}

// measure runs run, which returns how many messages it moved, and adds the CPU time
// used meanwhile. Without /proc it only runs it.
func (u *cpuUse) measure(run func() (msgs int)) {
	before, err := readCPU()
	start := time.Now()
	msgs := run()
	wall := time.Since(start)
	after, err2 := readCPU()
	if err != nil || err2 != nil {
		return
	}
	u.t.bench += after.bench - before.bench
	u.t.rabbit += after.rabbit - before.rabbit
	u.t.postgres += after.postgres - before.postgres
	u.msgs += msgs
	u.wall += wall
}

// String is the CPU time per message, by process, and how many of the machine's cores
// the three kept busy on average.
func (u cpuUse) String() string {
	if u.msgs == 0 || u.wall <= 0 {
		return "not measured"
	}
	per := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(u.msgs) }
	total := u.t.rabbit + u.t.postgres + u.t.bench
	return fmt.Sprintf("RabbitMQ %.0f µs, PostgreSQL %.0f µs, benchmark process %.0f µs (total %.0f µs; %.1f of %d cores busy)",
		per(u.t.rabbit), per(u.t.postgres), per(u.t.bench), per(total), total.Seconds()/u.wall.Seconds(), runtime.NumCPU())
}
