package e2e_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// proc is a running `sidebox relay` or `sidebox inbox` (testenv.Sidebox), with the
// few shorthands this test uses.
type proc struct{ *testenv.Sidebox }

// startSidebox starts `sidebox <command>` with env; see testenv.StartSidebox.
func startSidebox(t *testing.T, command string, env []string) *proc {
	t.Helper()
	return &proc{testenv.StartSidebox(t, sideboxBin, command, env)}
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

// waitReady waits up to 30s until /readyz answers 200.
func (p *proc) waitReady(t *testing.T, ctx context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p.WaitReady(ctx, t)
}

// counter returns the value of a counter on /metrics, summed over its labels; 0 when
// it cannot be read.
func (p *proc) counter(name string) int {
	v, _ := p.Counter(name)
	return int(v)
}

// stop sends SIGTERM and expects a clean exit (status 0) within 30s.
func (p *proc) stop() error { return p.Stop(30 * time.Second) }
