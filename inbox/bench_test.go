package inbox

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// BenchmarkIngest compares the inbox consumer's ingest rate with a plain amqp091-go
// consumer (same prefetch, one multiple ack per 128 deliveries) on a pre-filled queue.
//
//	go test ./inbox -run '^$' -bench Ingest -benchtime 20000x
//
// BENCH_INBOX=workers,batch,wait (for example 2,128,5ms) overrides the consumer's
// defaults; BENCH_INBOX_KEYS=n spreads the messages over n ordering keys (round robin).
// The machine must be otherwise idle for the numbers to mean anything.
func BenchmarkIngest(b *testing.B) {
	body := make([]byte, 256)
	keys, _ := strconv.Atoi(os.Getenv("BENCH_INBOX_KEYS"))
	// fill declares queue (deleted when the benchmark ends) and publishes b.N messages.
	fill := func(b *testing.B, conn *amqp.Connection, queue string) {
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(queue, false, false, false)
				_ = ch.Close()
			}
		})
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		var last *amqp.DeferredConfirmation
		for i := range b.N {
			msg := amqp.Publishing{MessageId: fmt.Sprintf("bench-%d", i), Body: body, DeliveryMode: amqp.Persistent}
			if keys > 0 {
				msg.Headers = amqp.Table{DefaultOrderingHeader: "key-" + strconv.Itoa(i%keys)}
			}
			last, err = ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, false, false, msg)
			if err != nil {
				b.Fatal(err)
			}
		}
		if last != nil {
			if _, err := last.WaitContext(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	rate := func(b *testing.B, d time.Duration) {
		b.ReportMetric(float64(b.N)/d.Seconds(), "msg/s")
	}

	b.Run("raw", func(b *testing.B) {
		conn := amqpConn(b, testenv.AMQPURL(b))
		queue := testenv.Name(b, "bench_raw")
		fill(b, conn, queue)
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if err := ch.Qos(DefaultPrefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start := time.Now()
		ds, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for d := range ds {
			n++
			if n%DefaultConsumerBatchSize == 0 || n == b.N {
				if err := d.Ack(true); err != nil {
					b.Fatal(err)
				}
			}
			if n == b.N {
				break
			}
		}
		rate(b, time.Since(start))
	})

	b.Run("inbox", func(b *testing.B) {
		url := testenv.AMQPURL(b)
		db, _ := testenv.DB(b)
		if err := Migrate(context.Background(), db, DefaultTable); err != nil {
			b.Fatal(err)
		}
		conn := amqpConn(b, url)
		queue := testenv.Name(b, "bench_inbox")
		fill(b, conn, queue)
		b.ResetTimer()
		start := time.Now()
		cfg := ConsumerConfig{Queue: queue}
		if v := os.Getenv("BENCH_INBOX"); v != "" { // workers,batch,wait
			var wait string
			if _, err := fmt.Sscanf(v, "%d,%d,%s", &cfg.Workers, &cfg.BatchSize, &wait); err != nil {
				b.Fatal(err)
			}
			cfg.BatchWait, _ = time.ParseDuration(wait)
		}
		r := startConsumer(b, db, url, cfg)
		for r.stored() < b.N {
			time.Sleep(time.Millisecond)
		}
		rate(b, time.Since(start))
		b.StopTimer()
		r.stop(b)
		var m dto.Metric
		if err := r.m.InboxBatchDuration.WithLabelValues(queue).(prometheus.Histogram).Write(&m); err != nil {
			b.Fatal(err)
		}
		h := m.GetHistogram()
		if n := h.GetSampleCount(); n > 0 {
			b.ReportMetric(float64(b.N)/float64(n), "msg/batch")
			b.ReportMetric(h.GetSampleSum()/float64(n)*1000, "ms/batch")
		}
	})
}
