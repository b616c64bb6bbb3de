package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// memoryLimitKiB is the relay's budget: half the sidecar chart's default memory limit
// (512 MiB, charts/sidebox values), since in `sidebox run` the inbox consumer shares
// the process.
const memoryLimitKiB = 256 << 10

// TestRelayMemoryLargeRow publishes one 127 MiB row with the default settings in a
// process of its own and checks its peak resident memory against the chart's limit:
// a row near the broker's max_message_size must not need several times its size
// while it is read from the database.
func TestRelayMemoryLargeRow(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector multiplies memory use")
	}
	t.Parallel()
	const size = 127 << 20 // RabbitMQ 3.x refuses bodies over 128 MiB by default
	db, dsn, table, url, exchange, s := setup(t, "outbox", "big")
	// Built by the server: a 1 KiB block of pseudo-random bytes, repeated. The
	// same block goes into a small row published after it.
	var block []byte
	if err := db.QueryRow(`SELECT decode(string_agg(md5(i::text), ''), 'hex') FROM generate_series(1, 64) i`).Scan(&block); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO `+table.String()+` (exchange, routing_key, payload, ordering_key)
		SELECT $1, 'big', decode(repeat(encode($2::bytea, 'hex'), $3), 'hex'), 'k'
		UNION ALL SELECT $1, 'big', $2::bytea, 'k'`, exchange, block, size/len(block)); err != nil {
		t.Fatalf("insert the large row: %v", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelayMemory$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "SIDEBOX_RELAY_HELPER=memory", "HELPER_DB="+dsn, "HELPER_AMQP="+url,
		"HELPER_TABLE="+table.String(), "HELPER_TOTAL=2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper failed: %v\n%s", err, tail(out))
	}
	peak := -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if _, v, ok := strings.Cut(sc.Text(), "peak_rss_kib="); ok {
			peak, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if peak < 0 {
		t.Fatalf("helper reported no peak:\n%s", tail(out))
	}
	t.Logf("publishing one row of %d MiB: peak RSS %d MiB", size>>20, peak>>10)
	if peak > memoryLimitKiB {
		t.Errorf("peak RSS %d MiB, above the relay's budget of %d MiB", peak>>10, memoryLimitKiB>>10)
	}

	s.waitDistinct(t, 2, time.Minute)
	msgs := s.messages()
	want := sha256.Sum256(bytes.Repeat(block, size/len(block)))
	if got := msgs[0].Body; len(got) != size || sha256.Sum256(got) != want {
		t.Errorf("large message: %d bytes, want %d, same content: %v", len(got), size, sha256.Sum256(got) == want)
	}
	if got := msgs[1].Body; !bytes.Equal(got, block) {
		t.Errorf("small message after it: %d bytes, want the %d-byte block", len(got), len(block))
	}
	if n := outboxCount(t, db, table, ""); n != 0 {
		t.Errorf("outbox holds %d rows, want 0", n)
	}
}

// tail is the end of a helper's output, for a failure message.
func tail(out []byte) string {
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// TestHelperRelayMemory is the process TestRelayMemoryLargeRow measures: it runs a
// relay with the default settings, on a connection opened as the sidecar opens it,
// until HELPER_TOTAL rows are published, then prints its peak resident set size.
func TestHelperRelayMemory(t *testing.T) {
	if os.Getenv("SIDEBOX_RELAY_HELPER") != "memory" {
		t.Skip("helper process only")
	}
	total, _ := strconv.Atoi(os.Getenv("HELPER_TOTAL"))
	dsn := os.Getenv("HELPER_DB")
	db, err := sql.Open("postgres", withBinaryParameters(dsn))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log := zap.NewNop()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	b := broker.New([]string{os.Getenv("HELPER_AMQP")}, broker.Config{Name: "sidebox-relay-memory", Backoff: fastBackoff()}, log, m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx)
	table := pg.MustParseTable(os.Getenv("HELPER_TABLE"))
	// Defaults, but for a publish timeout long enough for a 127 MiB publish on a loaded
	// machine: past the default 30 s the row is published again (twice in make test
	// here), and the test measures memory, not that machine's speed.
	r, err := New(db, Config{Table: table.String(), ListenDatabaseURL: dsn, PublishTimeout: 3 * time.Minute}, WithConnection(b), WithLogger(log), WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	testenv.Eventually(t, 3*time.Minute, "every row published", func() bool {
		return counter(t, m.Published, table) >= float64(total)
	})
	rcancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	u, err := testenv.ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("peak_rss_kib=%d\n", u.PeakRSS>>10)
}

// withBinaryParameters adds lib/pq's binary_parameters=yes to dsn, as the sidecar
// does (internal/sidecar.DSN).
func withBinaryParameters(dsn string) string {
	if strings.Contains(dsn, "://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "binary_parameters=yes"
	}
	return dsn + " binary_parameters=yes"
}

// TestRelayReadsLargePayloadsInChunks publishes rows around the sizes where the relay
// leaves a payload out of the claim (outboxdb.InlinePayload) and reads it in chunks
// (outboxdb.PayloadChunk), two of them above BatchBytes (each a batch of its own, one
// in memory at a time): every body arrives whole, and the rows are gone. It passes on
// the code before chunked reads too; it guards the chunked path.
func TestRelayReadsLargePayloadsInChunks(t *testing.T) {
	t.Parallel()
	db, dsn, table, url, exchange, s := setup(t, "outbox", "big")
	sizes := []int{
		outboxdb.InlinePayload, // inline
		outboxdb.InlinePayload + 1,
		outboxdb.PayloadChunk*2 + 3,
		outboxdb.PayloadChunk * 2, // with the one above: two rows above the 1 MiB BatchBytes, in two batches
		10,
	}
	bodies := map[string][]byte{}
	for i, n := range sizes {
		body := make([]byte, n)
		for j := range body {
			body[j] = byte(j*7 + i)
		}
		id, err := outbox.Write(context.Background(), db, outbox.Message{Exchange: exchange, RoutingKey: "big", Payload: body})
		if err != nil {
			t.Fatal(err)
		}
		bodies[id.String()] = body
	}
	cfg := testConfig(table)
	cfg.BatchBytes = 1 << 20
	startRelay(t, db, dsn, url, cfg)
	s.waitDistinct(t, len(sizes), time.Minute)
	for _, m := range s.messages() {
		if want := bodies[m.MessageId]; !bytes.Equal(m.Body, want) {
			t.Errorf("message %s: %d bytes, want %d, equal: false", m.MessageId, len(m.Body), len(want))
		}
	}
	testenv.Eventually(t, 10*time.Second, "the published rows deleted", func() bool { return outboxCount(t, db, table, "") == 0 })
}
