package testenv

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Ctl runs the node's own rabbitmqctl (same installation, node name and Erlang
// cookie) with args and returns its standard output; the test fails when it fails.
// It takes a second or two: the CLI starts an Erlang VM of its own.
func (r *RabbitMQ) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(filepath.Dir(r.server), "rabbitmqctl"), append([]string{"-n", r.node}, args...)...)
	cmd.Dir = r.dir
	cmd.Env = r.env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("testenv: rabbitmqctl %s on %s: %v\n%s%s", args[0], r.node, err, out, stderr.String())
	}
	return string(out)
}

// MemoryAlarm raises (on) or clears the node's memory alarm by setting its memory
// high watermark to almost nothing, or back to RabbitMQ's default of 0.4. While the
// alarm holds, RabbitMQ blocks every connection that publishes; consuming and
// acknowledging go on.
func (r *RabbitMQ) MemoryAlarm(t testing.TB, on bool) {
	t.Helper()
	mark := "0.4"
	if on {
		mark = "0.0000001"
	}
	r.Ctl(t, "set_vm_memory_high_watermark", mark)
}

// Connection is one client connection as rabbitmqctl lists it.
type Connection struct {
	Name  string // the client's connection_name, else its address
	State string // running, blocking (would be blocked on publishing), blocked, ...
}

var connectionName = regexp.MustCompile(`\{"connection_name",(?:longstr,)?"([^"]*)"\}`)

// Connections lists the node's client connections.
func (r *RabbitMQ) Connections(t testing.TB) []Connection {
	t.Helper()
	out := r.Ctl(t, "list_connections", "--quiet", "--no-table-headers", "client_properties", "state")
	var conns []Connection
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		props, state, _ := strings.Cut(line, "\t")
		c := Connection{State: strings.TrimSpace(state)}
		// client_properties prints as a list of {"key",value} pairs.
		if m := connectionName.FindStringSubmatch(props); m != nil {
			c.Name = m[1]
		}
		conns = append(conns, c)
	}
	return conns
}
