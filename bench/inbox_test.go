package bench

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/pg"
)

const (
	inboxMessages = 50000 // deliveries per run
	inboxDupEvery = 10    // every 10th delivery repeats an earlier message ID: 10% duplicates
	inboxRounds   = 3     // raw, inbox | inbox, raw | raw, inbox: best of each counts
	// The raw consumer uses the inbox consumer's defaults: prefetch and ack batch.
	rawPrefetch = inbox.DefaultPrefetch
	rawAckBatch = inbox.DefaultConsumerBatchSize
)

// inboxIDs returns the message IDs of the deliveries and the number of distinct ones:
// every inboxDupEvery-th repeats the ID of the delivery half-way back, so duplicates
// mostly fall into other batches and are caught by the table's key, not in memory.
func inboxIDs(n int) ([]string, int) {
	ids := messageIDs(n)
	for i := inboxDupEvery - 1; i < n; i += inboxDupEvery {
		ids[i] = ids[i/2]
	}
	distinct := map[string]struct{}{}
	for _, id := range ids {
		distinct[id] = struct{}{}
	}
	return ids, len(distinct)
}

// benchInbox compares the inbox consumer's ingest rate with a raw amqp091-go consumer
// that acks in batches, on the same pre-filled queue.
func benchInbox(b *testing.B) *report {
	e := newEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	table := pg.Table{Name: "inbox"}
	if err := inbox.Migrate(ctx, e.db, table.String()); err != nil {
		b.Fatalf("migrate inbox: %v", err)
	}
	m, reg := newMetrics()
	brk := e.startBroker(m)
	pub := e.dial("publisher")
	cons := e.dial("consumer")
	queue := e.queue(pub, "bench_inbox")
	sidecarDB := e.sidecarPool()

	ids, distinct := inboxIDs(inboxMessages)
	fill := func() {
		b.Helper()
		if err := publishConfirmed(ctx, pub, queue, ids, 1000); err != nil {
			b.Fatalf("fill queue: %v", err)
		}
	}

	var raw, box []float64
	var rawCPU, boxCPU cpuUse
	var busy []string // the inbox consumer's batch statistics per run
	runRaw := func() {
		fill()
		start := time.Now()
		var err error
		rawCPU.measure(func() int {
			err = consumeAcking(ctx, cons, queue, inboxMessages, rawPrefetch, rawAckBatch)
			return inboxMessages
		})
		if err != nil {
			b.Fatal(err)
		}
		raw = append(raw, inboxMessages/time.Since(start).Seconds())
	}
	runInbox := func() {
		e.exec(ctx, `TRUNCATE `+table.String())
		fill()
		before, err := sample(reg, "sidebox_inbox_batch_duration_seconds", "queue", queue)
		if err != nil {
			b.Fatal(err)
		}
		var elapsed time.Duration
		boxCPU.measure(func() int {
			elapsed, err = ingest(ctx, sidecarDB, brk, e.log, reg, m, inbox.ConsumerConfig{Queue: queue, Table: table.String()})
			return inboxMessages
		})
		if err != nil {
			b.Fatal(err)
		}
		after, err := sample(reg, "sidebox_inbox_batch_duration_seconds", "queue", queue)
		if err != nil {
			b.Fatal(err)
		}
		batches := after.count - before.count
		busy = append(busy, fmt.Sprintf("%d batches of %.0f on average, %.1f ms each; batch time summed = %.0f%% of the run",
			batches, float64(inboxMessages)/float64(batches), 1000*(after.sum-before.sum)/float64(batches),
			100*(after.sum-before.sum)/elapsed.Seconds()))
		var rows int
		if err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM `+table.String()).Scan(&rows); err != nil {
			b.Fatalf("count inbox rows: %v", err)
		}
		left, err := queueDepth(cons, queue)
		if err != nil {
			b.Fatal(err)
		}
		if rows != distinct || left != 0 {
			b.Fatalf("inbox run: %d rows stored (want %d), %d messages left in the queue", rows, distinct, left)
		}
		box = append(box, inboxMessages/elapsed.Seconds())
	}
	for round := range inboxRounds {
		if round%2 == 0 {
			runRaw()
			runInbox()
		} else {
			runInbox()
			runRaw()
		}
	}

	r := newReport("Inbox ingest: 50,000 deliveries of 256 B, 10% duplicate IDs (BenchmarkInboxIngest)",
		"consumer", "msgs/s (best)", "all runs", "ratio", "target")
	ratio := best(box) / best(raw)
	r.row(fmt.Sprintf("raw amqp091-go consumer, prefetch %d, multiple-ack per %d", rawPrefetch, rawAckBatch), rate(best(raw)), allRuns(raw), "", "")
	r.row("sidebox inbox consumer (defaults), stored with dedup", rate(best(box)), allRuns(box), fmt.Sprintf("%.2f", ratio), "≥ 0.80")
	r.goal("inbox ingest ÷ raw consume", fmt.Sprintf("%.2f (%s vs %s msgs/s)", ratio, rate(best(box)), rate(best(raw))), "≥ 0.80", ratio >= 0.8)
	r.plot(series{Plot: "throughput", Group: "inbox", Label: "raw amqp091-go consumer", Y: raw})
	r.plot(series{Plot: "throughput", Group: "inbox", Label: "sidebox inbox", Y: box})
	r.note("Queue durable, filled before each run with 50,000 persistent messages (%s distinct IDs); %d rounds in the order raw, inbox | inbox, raw | raw, inbox; the best run of each counts.", group(int64(distinct)), inboxRounds)
	r.note("Inbox run: from Consumer.Run until its counters show all 50,000 deliveries stored or counted as duplicates (then acked); checked: %s rows, queue empty.", group(int64(distinct)))
	r.note("CPU time per message over all runs, read from /proc from each run's start until all were settled: raw, %s; inbox, %s.", rawCPU, boxCPU)
	for i, s := range busy {
		r.note("Inbox run %d: %s (sidebox_inbox_batch_duration_seconds; %d workers store batches concurrently, so up to %d%%).", i+1, s, inbox.DefaultWorkers, 100*inbox.DefaultWorkers)
	}
	e.noteLoad(r)
	b.ReportMetric(best(raw), "raw-msgs/s")
	b.ReportMetric(best(box), "msgs/s")
	b.ReportMetric(ratio, "ratio")
	return r
}

// ingest runs an inbox consumer with cfg until it has settled inboxMessages deliveries,
// stops it and returns the time it took.
func ingest(ctx context.Context, db *sql.DB, brk *broker.Broker, log *zap.Logger, reg *prometheus.Registry, m *metrics.Metrics, cfg inbox.ConsumerConfig) (time.Duration, error) {
	queue := cfg.Queue
	c, err := inbox.NewConsumer(db, cfg, inbox.WithConnection(brk), inbox.WithLogger(log), inbox.WithRegisterer(reg))
	if err != nil {
		return 0, fmt.Errorf("inbox consumer: %w", err)
	}
	base := settled(m, queue)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(runCtx) }()
	err = waitFor(ctx, time.Millisecond, func() (bool, error) {
		return settled(m, queue)-base >= inboxMessages, nil
	})
	elapsed := time.Since(start)
	stop()
	if rerr := <-done; rerr != nil && err == nil {
		err = fmt.Errorf("inbox consumer: %w", rerr)
	}
	if err != nil {
		return 0, err
	}
	return elapsed, nil
}

// settled reads the inbox consumer's stored + duplicates counters of queue. It reads
// the two counters, not the registry: ingest polls it every millisecond, and a Gather
// of the whole registry costs about 60 µs of the cores the consumer is measured on.
func settled(m *metrics.Metrics, queue string) float64 {
	return counterValue(m.InboxStored.WithLabelValues(queue)) + counterValue(m.InboxDuplicates.WithLabelValues(queue))
}
