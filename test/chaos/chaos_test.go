package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// sideboxBin is the binary under test, built once by TestMain.
var sideboxBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sidebox-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if sideboxBin, err = testenv.BuildSidebox(dir); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	return m.Run()
}

// size picks a scenario's scale: the short form by default, the full one with
// SIDEBOX_CHAOS=full.
type size struct{ full bool }

func (s size) pick(short, full int) int {
	if s.full {
		return full
	}
	return short
}

func (s size) dur(short, full time.Duration) time.Duration {
	if s.full {
		return full
	}
	return short
}

// scenario is one fault, run against the shared private servers of the run.
type scenario struct {
	name string
	run  func(t *testing.T, ctx context.Context, srv *servers, sz size) row
}

// TestChaos runs every scenario in turn (SIDEBOX_CHAOS_RUN=regexp selects some),
// prints the table and, in the full form, writes it to results/latest.md.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("fault suite: a few minutes")
	}
	form := os.Getenv("SIDEBOX_CHAOS")
	if form == "" {
		form = "short"
	}
	if form != "short" && form != "full" {
		t.Fatalf("SIDEBOX_CHAOS=%q: want short or full", form)
	}
	sz := size{full: form == "full"}
	began := time.Now()
	srv := &servers{
		full: sz.full,
		pg:   testenv.StartPostgres(t),
		// 20 MiB: a 16 MiB message passes, a 24 MiB one is refused by the broker.
		mq:  testenv.StartRabbitMQ(t, testenv.WithRabbitMQConf("max_message_size = 20971520")),
		bin: sideboxBin,
	}
	only := os.Getenv("SIDEBOX_CHAOS_RUN")
	var rows []row
	for _, sc := range scenarios(sz) {
		if only != "" && !strings.Contains(sc.name, only) {
			continue
		}
		var (
			got     *row
			skipped string
		)
		t.Run(sc.name, func(t *testing.T) {
			defer func() {
				if t.Skipped() {
					skipped = "skipped"
				}
			}()
			ctx, cancel := context.WithTimeout(t.Context(), sz.dur(3*time.Minute, 10*time.Minute))
			defer cancel()
			r := sc.run(t, ctx, srv, sz)
			got = &r
		})
		switch {
		case skipped != "":
			continue
		case got == nil:
			got = &row{scenario: sc.name, failed: []string{"aborted: see the test log"}}
		}
		rows = append(rows, *got)
	}
	out := table(rows)
	fmt.Printf("\n%s\n", out)
	t.Logf("\n%s", out)
	if sz.full && only == "" {
		commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
		if err := writeResults(rows, form, strings.TrimSpace(string(commit)), time.Since(began)); err != nil {
			t.Errorf("write results: %v", err)
		}
	}
}

// scenarios lists the faults in the order of the issue.
func scenarios(sz size) []scenario {
	return []scenario{
		{fmt.Sprintf("1. relay SIGKILLed ×%d", sz.pick(5, 20)), relayKilled},
		{"2. RabbitMQ stopped and started", brokerRestarted},
		{"3. PostgreSQL restarted -m immediate", postgresCrashed},
		{"4. toxiproxy: cut, latency, bandwidth, half-open", networkFaults},
		{"5. broker memory alarm, sidebox run", memoryAlarm},
		{"6. publish stall > timeout with unroutable rows", publishStall},
		{"7. long transaction holding xmin", longTransaction},
		{"8. 3-node cluster, quorum queue, nodes killed", clusterNodesKilled},
		{"9. bad rows and input", badInput},
		{"10. two relays, two inboxes, ordered", twoOfEach},
	}
}
