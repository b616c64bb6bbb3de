package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// proc is a running `sidebox relay` or `sidebox inbox`, with its HTTP server on a port
// of its own and its log in the test's temporary directory.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string // SIDEBOX_HTTP_ADDR
	log  string
	done chan struct{}
	err  error // exit status, once done
}

// startSidebox starts `sidebox <command>` with env. The process is killed at the end of
// the test if it still runs, and its log is shown when the test failed.
func startSidebox(t *testing.T, command string, env []string) *proc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()

	logFile, err := os.CreateTemp(t.TempDir(), command+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(sideboxBin, command)
	cmd.Env = append(cleanEnv(), append(env, "SIDEBOX_HTTP_ADDR="+addr, "SIDEBOX_LOG_FORMAT=console")...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sidebox %s: %v", command, err)
	}
	p := &proc{name: "sidebox " + command, cmd: cmd, addr: addr, log: logFile.Name(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s (pid %d) log:\n%s", p.name, cmd.Process.Pid, p.logTail())
		}
	})
	return p
}

// cleanEnv is the test's environment without SIDEBOX_ variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDEBOX_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady waits until /readyz answers 200.
func (p *proc) waitReady(t *testing.T, ctx context.Context) {
	t.Helper()
	waitFor(t, ctx, 30*time.Second, p.name+" to be ready", func() bool {
		if p.exited() {
			t.Fatalf("%s exited while starting: %v\n%s", p.name, p.err, p.logTail())
		}
		resp, err := http.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// counter returns the value of a counter on /metrics, summed over its labels; 0 when
// it cannot be read.
func (p *proc) counter(name string) int {
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return 0
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
	return int(sum)
}

// kill SIGKILLs the process and waits for it to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if p.exited() {
		t.Fatalf("%s exited before it was killed: %v\n%s", p.name, p.err, p.logTail())
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and expects a clean exit (status 0) within 30s.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s after SIGTERM: %w", p.name, p.err)
		}
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s did not exit within 30s of SIGTERM", p.name)
	}
}

// logTail returns the last lines of the log.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}
