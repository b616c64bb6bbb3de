package inbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/testenv"
)

// memoryLimitKiB is the sidecar chart's default memory limit (charts/sidebox values).
const memoryLimitKiB = 512 << 10

// softLimitBytes is the Go runtime's soft memory limit that sidebox sets itself in a
// container of memoryLimitKiB (90%, internal/cli/memlimit.go); the measured process
// gets it through GOMEMLIMIT.
const softLimitBytes = memoryLimitKiB << 10 * 9 / 10

// TestConsumerMemoryBoundedByBytes consumes large messages with the default settings in
// a process of its own and checks its peak resident memory against the chart's limit.
// The prefetch count alone would let the broker hand the consumer every message at once.
func TestConsumerMemoryBoundedByBytes(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector multiplies memory use")
	}
	t.Parallel()
	total, size := 80, 4<<20
	// Other sizes and counts, for measurements.
	if v, err := strconv.Atoi(os.Getenv("SIDEBOX_MEMORY_TEST_MIB")); err == nil {
		total, size = max(320/v, 8), v<<20
	}
	if n, err := strconv.Atoi(os.Getenv("SIDEBOX_MEMORY_TEST_COUNT")); err == nil {
		total = n
	}
	measureConsumer(t, total, size, false)
}

// TestConsumerMemoryLargeMessage receives and stores one 127 MiB message (RabbitMQ 3.x
// refuses bodies over 128 MiB by default) with the default settings in a process of
// its own and checks its peak resident memory against the chart's limit. Receiving
// takes the AMQP client more than twice the message's size (it grows the body by
// appending, and each frame arrives in a buffer of its own); storing it must not take
// more than about once its size, checked on the peak from the first store on.
func TestConsumerMemoryLargeMessage(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector multiplies memory use")
	}
	t.Parallel()
	measureConsumer(t, 1, 127<<20, true)
}

// measureConsumer publishes total messages of size bytes, has a consumer with the
// default settings store them in a process of its own, and checks the process's peak
// resident memory against the chart's limit. storeOnly: the peak from the first store
// on, after collecting the garbage of receiving the message.
func measureConsumer(t *testing.T, total, size int, storeOnly bool) {
	t.Helper()
	db, dbURL, _ := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_memory")
	block := make([]byte, 1024)
	for i := range block {
		block[i] = byte(rand.IntN(256))
	}
	body := bytes.Repeat(block, size/len(block)) // compresses well: easy on the shared servers
	for i := 0; i < total; i += 10 {
		msgs := make([]amqp.Publishing, min(10, total-i))
		for j := range msgs {
			msgs[j] = amqp.Publishing{MessageId: strconv.Itoa(i + j), Body: body}
		}
		publish(t, conn, queue, msgs...)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMemoryProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "SIDEBOX_INBOX_HELPER=memory", "HELPER_DB="+dbURL, "HELPER_AMQP="+url,
		"HELPER_QUEUE="+queue, "HELPER_TOTAL="+strconv.Itoa(total), "HELPER_STORE_ONLY="+strconv.FormatBool(storeOnly),
		"GOMEMLIMIT="+strconv.Itoa(softLimitBytes))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper failed: %v\n%s", err, tail(out))
	}
	peak, received := -1, -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if _, v, ok := strings.Cut(line, "receive_peak_rss_kib="); ok {
			received, _ = strconv.Atoi(strings.TrimSpace(v))
		} else if _, v, ok := strings.Cut(line, "peak_rss_kib="); ok {
			peak, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if peak < 0 || storeOnly && received < 0 {
		t.Fatalf("helper reported no peak:\n%s", tail(out))
	}
	if storeOnly {
		t.Logf("receiving %d messages of %d MiB: peak RSS %d MiB", total, size>>20, received>>10)
		t.Logf("storing them: peak RSS %d MiB", peak>>10)
		if received > memoryLimitKiB {
			t.Errorf("peak RSS receiving %d MiB, above the chart's limit of %d MiB", received>>10, memoryLimitKiB>>10)
		}
		// Once the message plus the process's own base, not several times the message.
		if budget := size>>10 + 96<<10; peak > budget {
			t.Errorf("peak RSS storing %d MiB, above %d MiB (the message plus 96 MiB)", peak>>10, budget>>10)
		}
	} else {
		t.Logf("consuming %d messages of %d MiB: peak RSS %d MiB", total, size>>20, peak>>10)
		// Messages that fit the byte-bounded prefetch window stay within half the limit.
		if budget := memoryLimitKiB / 2; peak > budget {
			t.Errorf("peak RSS %d MiB, above half the chart's limit, %d MiB", peak>>10, budget>>10)
		}
	}
	sum := sha256.Sum256(body)
	if n := countRows(t, db, `SELECT count(*) FROM inbox WHERE sha256(payload) = $1`, sum[:]); n != total {
		t.Errorf("inbox rows with the body published = %d, want %d", n, total)
	}
}

// tail is the end of a helper's output, for a failure message.
func tail(out []byte) string {
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return string(out)
}

// TestHelperMemoryProcess is the process measureConsumer measures: it runs a consumer
// with the default settings until HELPER_TOTAL rows are stored, then prints its peak
// resident set size. With HELPER_STORE_ONLY=true it prints the peak so far when the
// first batch is about to be stored, collects the garbage and resets the peak.
func TestHelperMemoryProcess(t *testing.T) {
	if os.Getenv("SIDEBOX_INBOX_HELPER") != "memory" {
		t.Skip("helper process only")
	}
	total, _ := strconv.Atoi(os.Getenv("HELPER_TOTAL"))
	// As the sidecar opens it (internal/sidecar.DSN).
	db, err := openDB(withBinaryParameters(os.Getenv("HELPER_DB")))
	if err != nil {
		t.Fatal(err)
	}
	log := zap.NewNop()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	b := startBroker(t, os.Getenv("HELPER_AMQP"), log)
	queue := os.Getenv("HELPER_QUEUE")
	cfg := ConsumerConfig{Queue: queue}
	cfg.PrefetchBytes, _ = strconv.Atoi(os.Getenv("HELPER_PREFETCH_BYTES")) // 0: the default
	c, err := NewConsumer(db, cfg, WithConnection(b), WithLogger(log), WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("HELPER_STORE_ONLY") == "true" {
		var once sync.Once
		c.beforeStore = func() {
			once.Do(func() {
				fmt.Printf("receive_peak_rss_kib=%d\n", peakRSSKiB(t))
				debug.FreeOSMemory() // collects, then returns what is free
				// "5" resets the peak resident set size (proc(5), clear_refs).
				if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
					t.Error(err)
				}
			})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	testenv.Eventually(t, 3*time.Minute, "every message stored", func() bool {
		return counterValue(m.InboxStored.WithLabelValues(queue)) >= total
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fmt.Printf("peak_rss_kib=%d\n", peakRSSKiB(t))
}

// peakRSSKiB returns the process's peak resident set size (VmHWM) in KiB.
func peakRSSKiB(t *testing.T) int64 {
	u, err := testenv.ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return u.PeakRSS >> 10
}

// TestConsumerChangesPrefetchInOrder mixes small and large messages so that the
// consumer lowers and raises its prefetch count (cancelling and consuming again) while
// it works: every message is stored once, each key's rows in publish order.
func TestConsumerChangesPrefetchInOrder(t *testing.T) {
	t.Parallel()
	db, _, tbl := migrated(t, "inbox")
	url, conn, queue := testQueue(t, "inbox_window")
	var msgs []amqp.Publishing
	add := func(n, size int) {
		for range n {
			i := len(msgs)
			msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprintf("m-%04d", i), Body: make([]byte, size),
				Headers: amqp.Table{"x-ordering-key": "k" + strconv.Itoa(i%7)}})
		}
	}
	add(300, 100)
	add(6, 1<<20) // window 2 with PrefetchBytes 2 MiB
	add(300, 100)
	add(3, 3<<20) // above PrefetchBytes: window 1, stored alone
	add(300, 100)
	publish(t, conn, queue, msgs...)

	var mu sync.Mutex
	var counts []int
	r := startConsumerWith(t, db, url, ConsumerConfig{Queue: queue, Table: tbl, PrefetchBytes: 2 << 20, BatchBytes: 1 << 20},
		func(c *Consumer) {
			c.prefetchChanged = func(n int) { mu.Lock(); counts = append(counts, n); mu.Unlock() }
		})
	testenv.Eventually(t, 60*time.Second, "every message stored", func() bool { return r.stored() == len(msgs) })
	r.stop(t)
	if n := countRows(t, db, `SELECT count(*) FROM (SELECT message_id < lag(message_id) OVER (PARTITION BY ordering_key ORDER BY seq) AS back FROM inbox) x WHERE back`); n != 0 {
		t.Errorf("%d rows stored after a later message of their key", n)
	}
	if n := depth(t, conn, queue); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(counts, DefaultPrefetch) || !slices.Contains(counts, 2) || !slices.Contains(counts, 1) {
		t.Errorf("prefetch counts %v; want it raised to %d and lowered to 2 and 1", counts, DefaultPrefetch)
	}
}

// withBinaryParameters adds lib/pq's binary_parameters=yes to dbURL, as the sidecar
// does (internal/sidecar.DSN).
func withBinaryParameters(dbURL string) string {
	if strings.Contains(dbURL, "://") {
		sep := "?"
		if strings.Contains(dbURL, "?") {
			sep = "&"
		}
		return dbURL + sep + "binary_parameters=yes"
	}
	return dbURL + " binary_parameters=yes"
}
