package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setupHint ends every message about a missing server or binary.
const setupHint = "run `make test`, or `eval \"$(deploy/servers.sh up)\"` before `go test`, which installs and starts what is missing"

// process is a server started by this package, in a process group of its own.
type process struct {
	cmd  *exec.Cmd
	log  string        // file with the server's stdout and stderr
	done chan struct{} // closed once the process has exited
	err  error         // exit status; read only after done is closed
}

// startProcess starts cmd in a new process group, its output appended to logPath.
// The kernel sends deathSig to the process when the thread that started it ends; Go
// ends threads only with their process (unless a goroutine exits while locked to its
// thread), so a test binary that dies without cleaning up leaves no server behind.
func startProcess(cmd *exec.Cmd, logPath string, deathSig syscall.Signal, cred *syscall.Credential) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the leader of the process group.
func (p *process) signal(sig syscall.Signal) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// killGroup sends SIGKILL to every process of the group. It does nothing once the
// leader has been reaped: its pid, which names the group, may be reused.
func (p *process) killGroup() {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// stop sends sig to the leader (SIGKILL: to the whole group) and waits up to grace for
// it to exit, then kills the whole group and waits for the leader.
func (p *process) stop(sig syscall.Signal, grace time.Duration) error {
	if sig == syscall.SIGKILL {
		p.killGroup()
	} else {
		p.signal(sig)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.killGroup()
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}

// logTail returns the last lines of the process log, for failure messages.
func (p *process) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimSpace(string(b))
}

// serviceUser returns the credential to run a server as: nil when not root, else the
// named system user (PostgreSQL refuses to run as root).
func serviceUser(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root needs the system user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of %q: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of %q: %w", name, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// freePort returns a TCP port on 127.0.0.1 that is free now. It is taken below the
// kernel's ephemeral range, so that outgoing connections do not grab it before the
// server binds it, nor between a Stop and the next Start.
func freePort() (int, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const min = 20000
	if low-min < 1000 {
		return anyPort()
	}
	for range 100 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(low-min)))
		if err != nil {
			return 0, fmt.Errorf("random port: %w", err)
		}
		port := min + int(n.Int64())
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("close probe listener: %w", err)
		}
		return port, nil
	}
	return anyPort()
}

// anyPort asks the kernel for a free port.
func anyPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("close probe listener: %w", err)
	}
	return port, nil
}

// randomHex returns n random bytes as lower-case hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// waitUntil calls probe every pause until it succeeds, failing early when the process
// exits (what says what it was waiting for) and after timeout.
func (p *process) waitUntil(timeout, pause time.Duration, what string, probe func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := probe()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("exited (%v) before %s", p.err, what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not %s after %s: %w", what, timeout, err)
		}
		time.Sleep(pause)
	}
}
