package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RabbitCluster is a private RabbitMQ cluster of one test: nodes on this machine, each
// a [RabbitMQ] with its own node name, AMQP and distribution ports and data directory,
// sharing an Erlang cookie and an epmd of their own on its own port, so that the
// machine's standard epmd (and any broker registered with it) is never touched. Nodes
// can be killed and started again; a started node rejoins the cluster.
type RabbitCluster struct {
	Nodes []*RabbitMQ
}

// StartRabbitCluster starts an epmd on a free port and n nodes registered with it,
// named sbx-<hex>-<i>@localhost, and joins nodes 2..n to node 1 (rabbitmqctl
// join_cluster). Everything is killed and removed in t.Cleanup. Starting takes tens
// of seconds.
func StartRabbitCluster(t testing.TB, n int, opts ...RabbitMQOption) *RabbitCluster {
	t.Helper()
	epmdPort, err := freePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	startEpmd(t, epmdPort)
	cookie := strings.ToUpper(randomHex(10))
	prefix := "sbx-" + randomHex(4)
	c := &RabbitCluster{}
	for i := 1; i <= n; i++ {
		r := newRabbitMQ(t, fmt.Sprintf("%s-%d@localhost", prefix, i), opts...)
		r.epmdPort = epmdPort
		cookieFile := filepath.Join(r.dir, ".erlang.cookie")
		if err := os.WriteFile(cookieFile, []byte(cookie), 0o400); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		c.Nodes = append(c.Nodes, r)
	}
	for i, r := range c.Nodes {
		r.Start(t)
		if i == 0 {
			continue
		}
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", c.Nodes[0].node}, {"start_app"}} {
			r.Ctl(t, args...)
		}
		if err := r.waitReady(120 * time.Second); err != nil {
			t.Fatalf("testenv: cluster node %s after joining: %v\n--- rabbitmq.log ---\n%s", r.node, err, r.proc.logTail())
		}
	}
	return c
}

// URLs returns the nodes' AMQP URLs, node 1 first.
func (c *RabbitCluster) URLs() []string {
	urls := make([]string, len(c.Nodes))
	for i, r := range c.Nodes {
		urls[i] = r.URL()
	}
	return urls
}

// startEpmd runs an epmd of the test's own on 127.0.0.1:port until t.Cleanup.
func startEpmd(t testing.TB, port int) {
	t.Helper()
	bin, err := exec.LookPath("epmd")
	if err != nil {
		if found, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd"); len(found) > 0 {
			bin, err = found[len(found)-1], nil
		}
	}
	if err != nil {
		t.Fatalf("testenv: epmd not found; %s", setupHint)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "-port", strconv.Itoa(port))
	cmd.Env = append(os.Environ(), "ERL_EPMD_ADDRESS=127.0.0.1")
	proc, err := startProcess(cmd, filepath.Join(dir, "epmd.log"), syscall.SIGKILL, nil)
	if err != nil {
		t.Fatalf("testenv: epmd: %v", err)
	}
	t.Cleanup(func() { _ = proc.stop(syscall.SIGKILL, 0) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := epmdNames(port)
		if err == nil {
			return
		}
		if proc.exited() || time.Now().After(deadline) {
			t.Fatalf("testenv: epmd on port %d: %v\n%s", port, errors.Join(err, proc.err), proc.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
