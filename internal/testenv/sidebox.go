package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BuildSidebox builds the sidebox binary (`go build ./cmd/sidebox`, default flags so
// the packages compiled for tests are reused) into dir and returns its path. Call it
// once per test binary, from TestMain.
func BuildSidebox(dir string) (string, error) {
	bin := filepath.Join(dir, "sidebox")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/sidebox/sidebox/cmd/sidebox")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/sidebox: %w\n%s", err, out)
	}
	return bin, nil
}

// Sidebox is a running `sidebox` process (relay, inbox or run) of one test, with its
// HTTP server on a free port of 127.0.0.1 and its log in the test's temporary
// directory. Start it with [StartSidebox].
type Sidebox struct {
	Name string // "sidebox relay", for messages
	addr string // SIDEBOX_HTTP_ADDR
	proc *process
}

// StartSidebox starts `bin command` with the test's environment less its SIDEBOX_
// variables, plus env, SIDEBOX_HTTP_ADDR and console logs. The process is killed in
// t.Cleanup if it still runs, and the end of its log is shown when the test failed.
func StartSidebox(t testing.TB, bin, command string, env []string) *Sidebox {
	t.Helper()
	port, err := anyPort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logFile, err := os.CreateTemp(t.TempDir(), command+"-*.log")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	_ = logFile.Close()
	cmd := exec.Command(bin, command)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDEBOX_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Env = append(cmd.Env, "SIDEBOX_HTTP_ADDR="+addr, "SIDEBOX_LOG_FORMAT=console")
	proc, err := startProcess(cmd, logFile.Name(), syscall.SIGKILL, nil)
	if err != nil {
		t.Fatalf("testenv: sidebox %s: %v", command, err)
	}
	s := &Sidebox{Name: "sidebox " + command, addr: addr, proc: proc}
	t.Cleanup(func() {
		_ = proc.stop(syscall.SIGKILL, 0)
		if t.Failed() {
			t.Logf("%s (pid %d) log:\n%s", s.Name, proc.cmd.Process.Pid, proc.logTail())
		}
	})
	return s
}

// Exited reports whether the process has ended, and how.
func (s *Sidebox) Exited() (bool, error) {
	if !s.proc.exited() {
		return false, nil
	}
	return true, s.proc.err
}

// Ready reports whether /readyz answers 200.
func (s *Sidebox) Ready() bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.addr + "/readyz")
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady waits until /readyz answers 200; the test fails when the process exits
// first or ctx ends.
func (s *Sidebox) WaitReady(ctx context.Context, t testing.TB) {
	t.Helper()
	for !s.Ready() {
		if done, err := s.Exited(); done {
			t.Fatalf("%s exited while starting: %v\n%s", s.Name, err, s.proc.logTail())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not ready: %v\n%s", s.Name, ctx.Err(), s.proc.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Counter returns a counter or gauge of /metrics summed over its labels, and whether
// /metrics could be read.
func (s *Sidebox) Counter(name string) (float64, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum, sc.Err() == nil
}

// Kill SIGKILLs the process and waits until it is gone.
func (s *Sidebox) Kill(t testing.TB) {
	t.Helper()
	if err := s.proc.stop(syscall.SIGKILL, 0); err != nil {
		t.Fatalf("testenv: kill %s: %v", s.Name, err)
	}
}

// Stop sends SIGTERM and waits up to grace for the process to exit; it returns an
// error when it exits with a non-zero status or has to be killed.
func (s *Sidebox) Stop(grace time.Duration) error {
	if done, err := s.Exited(); done {
		return fmt.Errorf("%s had already exited: %v", s.Name, err)
	}
	s.proc.signal(syscall.SIGTERM)
	select {
	case <-s.proc.done:
		if s.proc.err != nil {
			return fmt.Errorf("%s after SIGTERM: %w", s.Name, s.proc.err)
		}
		return nil
	case <-time.After(grace):
	}
	_ = s.proc.stop(syscall.SIGKILL, 0)
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", s.Name, grace)
}

// LogTail returns the last lines of the process log.
func (s *Sidebox) LogTail() string { return s.proc.logTail() }

// Log returns the whole process log.
func (s *Sidebox) Log() string {
	b, err := os.ReadFile(s.proc.log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// PeakMemory returns the process's peak resident set size (VmHWM) in bytes, while it
// runs (Linux only).
func (s *Sidebox) PeakMemory() (int64, error) {
	u, err := s.Usage()
	return u.PeakRSS, err
}

// Usage returns the process's peak resident memory and CPU time so far, while it runs
// (Linux only).
func (s *Sidebox) Usage() (Usage, error) {
	u, err := ProcessUsage(s.proc.cmd.Process.Pid)
	if err != nil {
		return u, fmt.Errorf("%s: %w", s.Name, err)
	}
	return u, nil
}
