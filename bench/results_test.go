package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// SIDEBOX_BENCH_OUT names the directory where each benchmark leaves its report (JSON,
// with the Markdown and the plot series) and the machine's description, for
// bench/report to assemble into bench/results/<date>.md with plots. make bench sets it.
const outEnv = "SIDEBOX_BENCH_OUT"

// saved is a report as bench/report reads it.
type saved struct {
	Name     string     `json:"name"`
	At       int64      `json:"at"` // Unix ns: the order of the results file
	Title    string     `json:"title"`
	Markdown string     `json:"markdown"`
	Head     []string   `json:"head"`
	Rows     [][]string `json:"rows"`
	Series   []series   `json:"series,omitempty"`
	Targets  []target   `json:"targets,omitempty"`
}

// target is one figure of the results' summary: measured against its target, reported
// and not asserted.
type target struct {
	Figure string `json:"figure"`
	Value  string `json:"value"`
	Target string `json:"target"`
	Met    bool   `json:"met"`
}

// goal adds a figure to the results' summary.
func (r *report) goal(figure, value, want string, met bool) {
	r.targets = append(r.targets, target{Figure: figure, Value: value, Target: want, Met: met})
}

// emit prints r to standard output and, with SIDEBOX_BENCH_OUT set, saves it there with
// the machine's description.
func emit(b *testing.B, r *report) {
	b.Helper()
	fmt.Print(r)
	dir := os.Getenv(outEnv)
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatalf("%s: %v", outEnv, err)
	}
	name := strings.ReplaceAll(b.Name(), "/", "_")
	s := saved{Name: b.Name(), At: time.Now().UnixNano(), Title: r.title, Markdown: r.String(),
		Head: r.head, Rows: r.rows, Series: r.series, Targets: r.targets}
	if err := writeJSON(filepath.Join(dir, name+".json"), s); err != nil {
		b.Fatal(err)
	}
	machinePath := filepath.Join(dir, "machine.json")
	if _, err := os.Stat(machinePath); err == nil {
		return
	}
	if err := writeJSON(machinePath, describeMachine(b)); err != nil {
		b.Fatal(err)
	}
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// machine is what the results file says about where it was measured.
type machine struct {
	Cores      int    `json:"cores"`
	CPU        string `json:"cpu"`
	Memory     string `json:"memory"`
	Go         string `json:"go"`
	PostgreSQL string `json:"postgresql"`
	RabbitMQ   string `json:"rabbitmq"`
	Load       string `json:"load"`
}

// describeMachine reads the cores, the CPU model, the memory and the servers' versions.
func describeMachine(b *testing.B) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Load: loadAverage(), CPU: "unknown", Memory: "unknown",
		PostgreSQL: "unknown", RabbitMQ: "unknown"}
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(info), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if info, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb); err == nil {
					m.Memory = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	db, _ := testenv.DB(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v, sc string
	if err := db.QueryRowContext(ctx, `SELECT current_setting('server_version'), current_setting('synchronous_commit')`).Scan(&v, &sc); err == nil {
		m.PostgreSQL = fmt.Sprintf("%s (synchronous_commit = %s)", v, sc)
	}
	if conn, err := amqp.Dial(testenv.AMQPURL(b)); err == nil {
		if v, ok := conn.Properties["version"].(string); ok {
			m.RabbitMQ = v
		}
		_ = conn.Close()
	}
	return m
}
