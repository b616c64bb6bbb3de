package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// child is one process the demo runs: a sidecar or an example service. Its output
// goes to a log file; it runs in a process group of its own, so that a Ctrl-C in the
// terminal reaches only the demo, which then stops its children in order.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
}

// start runs path with env added to a clean environment, appending its output to
// logPath.
func start(name, path string, args, env []string, logPath string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(path, args...)
	cmd.Env = append(baseEnv(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// baseEnv is the demo's environment without SIDEBOX_ variables, so that a sidecar
// sees only the configuration the demo gives it.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIDEBOX_") {
			env = append(env, kv)
		}
	}
	return env
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// stop sends SIGTERM, waits up to grace for a clean exit, then kills. It returns the
// exit error of a process that did not stop cleanly.
func (c *child) stop(grace time.Duration) error {
	if c.exited() {
		return c.exitError()
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.exitError()
	case <-time.After(grace):
		c.kill()
		return fmt.Errorf("%s did not stop within %s after SIGTERM; killed it", c.name, grace)
	}
}

func (c *child) exitError() error {
	if c.err != nil {
		return fmt.Errorf("%s: %w", c.name, c.err)
	}
	return nil
}

// tail returns the last n lines of the child's log, indented.
func (c *child) tail(n int) string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + string(bytes.Join(lines, []byte("\n    ")))
}

// waitReady polls url (a /readyz endpoint) until it answers 200. It fails early when
// the child exits.
func (c *child) waitReady(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited while starting (%v); its log ends with:\n%s", c.name, c.err, c.tail(10))
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s not ready after %s (%s); its log ends with:\n%s", c.name, timeout, url, c.tail(10))
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// freeAddr returns a local address nobody listens on, for a sidecar's HTTP server.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
