package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RabbitMQ is a private RabbitMQ node of one test, for fault tests: it can be
// stopped, killed and started again on the same port with the same data (durable
// queues and persistent messages survive). User guest/guest, no plugins, 127.0.0.1
// only. Its methods must be called from the test's goroutine.
type RabbitMQ struct {
	server   string   // the rabbitmq-server script
	dir      string   // temporary root: config, mnesia/, .erlang.cookie, rabbitmq.log
	node     string   // Erlang node name, unique per instance
	port     int      // AMQP port on 127.0.0.1
	distPort int      // Erlang distribution port on 127.0.0.1
	conf     string   // extra rabbitmq.conf lines
	epmdPort int      // port of the epmd the node registers with; 0 = the standard 4369
	proc     *process // the Erlang VM; nil before the first start

	tls     *TLSFiles // set by RabbitMQTLS
	tlsPort int       // AMQPS port on 127.0.0.1 with RabbitMQTLS
}

// RabbitMQOption configures a private RabbitMQ node of [StartRabbitMQ].
type RabbitMQOption func(*RabbitMQ)

// RabbitMQTLS adds a TLS listener ([RabbitMQ.TLSURL]) with the server certificate of
// files; it demands a client certificate signed by files.CA (mutual TLS). The plain
// listener stays.
func RabbitMQTLS(files *TLSFiles) RabbitMQOption {
	return func(r *RabbitMQ) { r.tls = files }
}

// WithRabbitMQConf appends lines (new-style rabbitmq.conf, such as
// "max_message_size = 20971520") to the node's configuration.
func WithRabbitMQConf(lines string) RabbitMQOption {
	return func(r *RabbitMQ) { r.conf += strings.TrimSpace(lines) + "\n" }
}

// StartRabbitMQ starts a RabbitMQ node from the local installation with a temporary
// data directory and free ports; it is killed and removed in t.Cleanup. It runs as the
// current user (root included) with HOME in its directory, which holds its Erlang cookie.
// Starting takes several seconds: share one node between the steps of a test.
func StartRabbitMQ(t testing.TB, opts ...RabbitMQOption) *RabbitMQ {
	t.Helper()
	r := newRabbitMQ(t, "sidebox-"+randomHex(6)+"@localhost", opts...)
	r.Start(t)
	return r
}

// newRabbitMQ prepares a node's directory, ports and configuration without starting it.
func newRabbitMQ(t testing.TB, node string, opts ...RabbitMQOption) *RabbitMQ {
	t.Helper()
	server, err := rabbitmqServer()
	if err != nil {
		t.Fatalf("testenv: %v; %s", err, setupHint)
	}
	dir, err := os.MkdirTemp("", "sidebox-rabbitmq-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	r := &RabbitMQ{server: server, dir: dir, node: node}
	for _, o := range opts {
		o(r)
	}
	t.Cleanup(func() { r.cleanup(t) })

	if r.port, err = freePort(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for r.distPort == 0 || r.distPort == r.port {
		if r.distPort, err = freePort(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	for r.tls != nil && (r.tlsPort == 0 || r.tlsPort == r.port || r.tlsPort == r.distPort) {
		if r.tlsPort, err = freePort(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if err := r.writeConfig(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return r
}

// URL returns the node's AMQP URL (guest/guest, default vhost).
func (r *RabbitMQ) URL() string {
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", r.port)
}

// TLSURL returns the node's AMQPS URL (guest/guest, default vhost); only with
// [RabbitMQTLS].
func (r *RabbitMQ) TLSURL() string {
	return fmt.Sprintf("amqps://guest:guest@127.0.0.1:%d/", r.tlsPort)
}

// Addr returns the node's AMQP host:port.
func (r *RabbitMQ) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Start starts the stopped node again with the same name, ports and data, and waits
// until it accepts AMQP connections. It does nothing if the node runs.
func (r *RabbitMQ) Start(t testing.TB) {
	t.Helper()
	if r.running() {
		return
	}
	// A node killed a moment ago may still be listed by epmd; the new one would refuse
	// to start under the same name.
	if err := waitEpmdForget(r.epmd(), nodeShortName(r.node), 10*time.Second); err != nil {
		t.Fatalf("testenv: rabbitmq %s: %v", r.node, err)
	}
	cmd := exec.Command(r.server)
	cmd.Dir = r.dir
	cmd.Env = r.env()
	proc, err := startProcess(cmd, filepath.Join(r.dir, "rabbitmq.log"), syscall.SIGKILL, nil)
	if err != nil {
		t.Fatalf("testenv: rabbitmq: %v", err)
	}
	r.proc = proc
	if err := r.waitReady(120 * time.Second); err != nil {
		t.Fatalf("testenv: rabbitmq %s on %s: %v\n--- rabbitmq.log ---\n%s", r.node, r.Addr(), err, r.proc.logTail())
	}
}

// Stop shuts the node down gracefully (a few seconds; it is killed after 30 s) and
// waits until it has exited and released its ports.
func (r *RabbitMQ) Stop(t testing.TB) {
	t.Helper()
	r.halt(t, syscall.SIGTERM, 30*time.Second)
}

// Kill kills the node at once, as in a crash: what the broker confirmed (declared
// durable entities, confirmed persistent messages) survives. It waits until the ports
// are released.
func (r *RabbitMQ) Kill(t testing.TB) {
	t.Helper()
	r.halt(t, syscall.SIGKILL, 0)
}

// Restart stops the node gracefully and starts it again.
func (r *RabbitMQ) Restart(t testing.TB) {
	t.Helper()
	r.Stop(t)
	r.Start(t)
}

func (r *RabbitMQ) halt(t testing.TB, sig syscall.Signal, grace time.Duration) {
	t.Helper()
	if !r.running() {
		return
	}
	if err := r.proc.stop(sig, grace); err != nil {
		t.Fatalf("testenv: stop rabbitmq: %v", err)
	}
}

// Node returns the node's Erlang name.
func (r *RabbitMQ) Node() string { return r.node }

func (r *RabbitMQ) running() bool { return r.proc != nil && !r.proc.exited() }

// writeConfig writes the node's own configuration files, so that nothing from
// /etc/rabbitmq (such as the shared node's listener) applies to it.
func (r *RabbitMQ) writeConfig() error {
	conf := fmt.Sprintf(`listeners.tcp.1 = 127.0.0.1:%d
log.console = true
log.console.level = info
log.file = false
`, r.port) + r.conf
	if r.tls != nil {
		conf += fmt.Sprintf(`listeners.ssl.1 = 127.0.0.1:%d
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
`, r.tlsPort, r.tls.CA, r.tls.ServerCert, r.tls.ServerKey)
	}
	files := map[string]string{
		"rabbitmq-env.conf": "",
		"enabled_plugins":   "[].\n",
		"rabbitmq.conf":     conf,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write rabbitmq config: %w", err)
		}
	}
	return nil
}

// env is the process environment of the node: the test's, less anything that
// configures RabbitMQ or Erlang, plus the node's own settings.
func (r *RabbitMQ) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RABBITMQ_") || strings.HasPrefix(k, "ERL_") || k == "HOME" || k == "NOTIFY_SOCKET" {
			continue
		}
		env = append(env, kv)
	}
	if r.epmdPort != 0 {
		env = append(env, "ERL_EPMD_PORT="+strconv.Itoa(r.epmdPort))
	}
	return append(env,
		"HOME="+r.dir, // Erlang keeps its cookie in $HOME/.erlang.cookie
		"RABBITMQ_NODENAME="+r.node,
		"RABBITMQ_DIST_PORT="+strconv.Itoa(r.distPort),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(r.dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(r.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(r.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(r.dir, "enabled_plugins"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(r.dir, "plugins-expand"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(r.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(r.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(r.dir, "rabbitmq.pid"),
		// With input allowed the script execs the VM instead of waiting on it, so the
		// VM is the process we signal; -noinput keeps it from reading stdin.
		"RABBITMQ_ALLOW_INPUT=true",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-noinput -kernel inet_dist_use_interface {127,0,0,1}",
		// An epmd started by this node listens on loopback only.
		"ERL_EPMD_ADDRESS=127.0.0.1",
	)
}

// waitReady polls until the node accepts an AMQP connection, fails early if it exits.
func (r *RabbitMQ) waitReady(timeout time.Duration) error {
	return r.proc.waitUntil(timeout, 50*time.Millisecond, "accepting AMQP connections", func() error {
		return probeAMQP(r.URL(), 2*time.Second)
	})
}

// cleanup kills the node and removes its directory.
func (r *RabbitMQ) cleanup(t testing.TB) {
	if r.running() {
		if err := r.proc.stop(syscall.SIGKILL, 0); err != nil {
			t.Errorf("testenv: stop rabbitmq: %v", err)
		}
	}
	if err := os.RemoveAll(r.dir); err != nil {
		t.Errorf("testenv: remove %s: %v", r.dir, err)
	}
}

// rabbitmqServer finds the rabbitmq-server script that runs the broker in the
// foreground as the calling user. Debian's /usr/sbin/rabbitmq-server is a wrapper that
// switches to the rabbitmq user and sends the output to /var/log; the script it wraps
// is in /usr/lib/rabbitmq/bin.
func rabbitmqServer() (string, error) {
	candidates := []string{"/usr/lib/rabbitmq/bin/rabbitmq-server"}
	if p, err := exec.LookPath("rabbitmq-server"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		target, err := filepath.EvalSymlinks(c)
		if err != nil || filepath.Base(target) == "rabbitmq-script-wrapper" || !usable(target) {
			continue
		}
		return c, nil
	}
	return "", errors.New("RabbitMQ server (rabbitmq-server) not found in /usr/lib/rabbitmq/bin or on PATH")
}

// nodeShortName returns the part of an Erlang node name before the '@'.
func nodeShortName(node string) string {
	name, _, _ := strings.Cut(node, "@")
	return name
}

// epmd returns the port of the node's epmd.
func (r *RabbitMQ) epmd() int {
	if r.epmdPort != 0 {
		return r.epmdPort
	}
	return 4369
}

// waitEpmdForget waits until the epmd on port no longer lists name.
func waitEpmdForget(port int, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		names, err := epmdNames(port)
		if err != nil {
			return nil // no epmd, so nothing is registered
		}
		if !bytes.Contains(names, []byte("name "+name+" at port ")) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("epmd still lists node %q after %s", name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// epmdNames asks the epmd on 127.0.0.1:port for its registered names (NAMES_REQ) and
// returns its text: one "name <node> at port <port>" line per node.
func epmdNames(port int) ([]byte, error) {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return nil, fmt.Errorf("epmd: %w", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return nil, fmt.Errorf("epmd: %w", err)
	}
	if _, err := c.Write([]byte{0, 1, 'n'}); err != nil { // length 1, NAMES_REQ
		return nil, fmt.Errorf("epmd: %w", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("epmd: %w", err)
	}
	if len(b) < 4 { // the reply starts with epmd's own port
		return nil, errors.New("epmd: short reply")
	}
	return b[4:], nil
}
