// Package metrics defines every Prometheus metric the sidebox binary exports.
//
// One Metrics value is created per process with New and handed to the components
// that update it; nothing here is global, so tests can use a fresh registry each.
package metrics

import (
	"errors"
	"fmt"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the collectors of the relay, the inbox and the process.
type Metrics struct {
	// Outbox relay.
	Published      *prometheus.CounterVec   // table
	PublishLatency *prometheus.HistogramVec // table; commit-to-confirm, database clock
	BatchSize      *prometheus.HistogramVec // table
	Returned       *prometheus.CounterVec   // table
	Nacked         *prometheus.CounterVec   // table
	DeadTotal      *prometheus.CounterVec   // table; rows this process turned dead
	Pending        *prometheus.GaugeVec     // table
	Retrying       *prometheus.GaugeVec     // table
	Dead           *prometheus.GaugeVec     // table
	BlockedKeys    *prometheus.GaugeVec     // table
	OldestPending  *prometheus.GaugeVec     // table; seconds, database clock
	OldestRetrying *prometheus.GaugeVec     // table; seconds since the oldest retrying row was written
	WakeupsPolled  *prometheus.GaugeVec     // table; 1 while no notification can wake the relay

	// Inbox.
	InboxReceived      *prometheus.CounterVec   // queue
	InboxStored        *prometheus.CounterVec   // queue
	InboxDuplicates    *prometheus.CounterVec   // queue
	InboxRejected      *prometheus.CounterVec   // queue, reason
	InboxBatchDuration *prometheus.HistogramVec // queue
	InboxPrefetch      *prometheus.GaugeVec     // queue
	InboxSeqRegressed  *prometheus.CounterVec   // queue
	InboxUnprocessed   *prometheus.GaugeVec     // table
	InboxDead          *prometheus.GaugeVec     // table
	InboxPurged        *prometheus.CounterVec   // table

	// Process.
	Up        *prometheus.GaugeVec // dependency: postgres, rabbitmq
	BuildInfo *prometheus.GaugeVec // version, commit

	RabbitMQBlocked *prometheus.GaugeVec // connection: publish, consume

	names []string
}

// Dependency label values of Up.
const (
	DependencyPostgres = "postgres"
	DependencyRabbitMQ = "rabbitmq"
)

// New creates the collectors and registers them with reg; it panics when reg refuses
// one (see Register).
func New(reg prometheus.Registerer) *Metrics {
	m, err := Register(reg)
	if err != nil {
		panic(err)
	}
	return m
}

// Register creates the collectors and registers them with reg. A collector that reg
// already holds, from an earlier Register on it, is reused: the components of one process
// (the relay, the inbox consumer, the purger) each register on the process's registry and
// update the same series. A metric of the same name that is not one of these is an error.
func Register(reg prometheus.Registerer) (*Metrics, error) {
	var names []string
	var errs []error
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		names = append(names, name)
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels), &errs)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		names = append(names, name)
		return register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels), &errs)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		names = append(names, name)
		return register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels), &errs)
	}
	latency := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	sizes := []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}

	m := &Metrics{
		Published:      counter("sidebox_outbox_published_total", "Outbox rows published and confirmed by the broker.", "table"),
		PublishLatency: histogram("sidebox_outbox_publish_latency_seconds", "Time from a row's creation to its confirmed removal, on the database clock.", latency, "table"),
		BatchSize:      histogram("sidebox_outbox_batch_size", "Rows claimed per relay batch.", sizes, "table"),
		Returned:       counter("sidebox_outbox_returned_total", "Messages the broker returned as unroutable.", "table"),
		Nacked:         counter("sidebox_outbox_nacked_total", "Messages the broker negatively acknowledged.", "table"),
		DeadTotal:      counter("sidebox_outbox_dead_total", "Rows this process marked dead after the last allowed attempt.", "table"),
		Pending:        gauge("sidebox_outbox_pending", "Outbox rows waiting for their first publish.", "table"),
		Retrying:       gauge("sidebox_outbox_retrying", "Outbox rows waiting for a retry after a failed publish.", "table"),
		Dead:           gauge("sidebox_outbox_dead", "Outbox rows kept as dead.", "table"),
		BlockedKeys:    gauge("sidebox_outbox_blocked_keys", "Ordering keys held up by a retrying or dead row.", "table"),
		OldestPending:  gauge("sidebox_outbox_oldest_pending_age_seconds", "Age of the oldest row not yet published, on the database clock.", "table"),
		OldestRetrying: gauge("sidebox_outbox_oldest_retrying_age_seconds", "Age of the oldest row that failed and waits for a retry (0 when none), on the database clock: a row stuck unroutable grows it.", "table"),
		WakeupsPolled:  gauge("sidebox_outbox_wakeups_polled", "1 while the relay polls for new rows because notifications do not reach it (LISTEN connection down, or through a transaction pooler), else 0.", "table"),

		InboxReceived:      counter("sidebox_inbox_received_total", "Deliveries received from the inbox queue.", "queue"),
		InboxStored:        counter("sidebox_inbox_stored_total", "Deliveries stored as new inbox rows.", "queue"),
		InboxDuplicates:    counter("sidebox_inbox_duplicates_total", "Deliveries whose message id was already stored for the consumer.", "queue"),
		InboxRejected:      counter("sidebox_inbox_rejected_total", "Deliveries rejected without requeue.", "queue", "reason"),
		InboxBatchDuration: histogram("sidebox_inbox_batch_duration_seconds", "Time to store and acknowledge one batch of deliveries.", latency, "queue"),
		InboxPrefetch:      gauge("sidebox_inbox_prefetch", "Prefetch count of the inbox consumer, lowered to hold at most SIDEBOX_INBOX_PREFETCH_BYTES of payloads.", "queue"),
		InboxSeqRegressed:  counter("sidebox_inbox_seq_regressions_total", "Deliveries whose x-outbox-seq is lower than one delivered before for their ordering key (stored all the same).", "queue"),
		InboxUnprocessed:   gauge("sidebox_inbox_unprocessed", "Inbox rows stored but not yet processed.", "table"),
		InboxDead:          gauge("sidebox_inbox_dead", "Inbox rows kept as dead after failed processing.", "table"),
		InboxPurged:        counter("sidebox_inbox_purged_total", "Processed inbox rows removed after the retention window.", "table"),

		Up:        gauge("sidebox_up", "1 while the dependency is connected, else 0.", "dependency"),
		BuildInfo: gauge("sidebox_build_info", "Always 1; labelled with the build's version and commit.", "version", "commit"),

		RabbitMQBlocked: gauge("sidebox_rabbitmq_blocked", "1 while RabbitMQ blocks the connection (a memory or disk alarm), else 0.", "connection"),
	}
	m.names = names
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register sidebox metrics: %w", err)
	}
	return m, nil
}

// register registers c with reg, or returns the equal collector reg already holds.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errs *[]error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if old, ok := are.ExistingCollector.(C); ok {
			return old
		}
	}
	*errs = append(*errs, err)
	return c
}

// Names returns the names of the metric families the process exports, sorted.
func (m *Metrics) Names() []string {
	names := append([]string(nil), m.names...)
	sort.Strings(names)
	return names
}
