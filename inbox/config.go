package inbox

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/topology"
)

// ConfigError reports an invalid configuration field. Field is the Go field name of the
// config struct (Prefetch, BatchSize ...), so that a caller can name its own variable.
type ConfigError struct {
	Field   string
	Problem string
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Problem }

// check collects every problem found in a config.
type check struct{ errs []error }

// fail records problem (a format) for field when bad.
func (k *check) fail(bad bool, field, problem string, args ...any) {
	if bad {
		k.errs = append(k.errs, &ConfigError{field, fmt.Sprintf(problem, args...)})
	}
}

func (k *check) required(field, v string) { k.fail(v == "", field, "must be set") }

func (k *check) between(field string, v, lo, hi int) {
	k.fail(v < lo || v > hi, field, "must be between %d and %d, got %d", lo, hi, v)
}

func (k *check) positive(field string, d time.Duration) {
	k.fail(d <= 0, field, "must be positive, got %s", d)
}

// table checks a table name: "name" or "schema.name".
func (k *check) table(v string) {
	_, err := pg.ParseTable(v)
	k.fail(err != nil, "Table", "%v", err)
}

// result is every problem, each a *ConfigError, joined with errors.Join; nil for none.
func (k *check) result() error { return errors.Join(k.errs...) }

// Defaults of ConsumerConfig.
const (
	DefaultPrefetch          = 512
	DefaultConsumerBatchSize = 128
	DefaultBatchWait         = 5 * time.Millisecond
	DefaultWorkers           = 2
	DefaultBatchBytes        = 4 << 20
	DefaultPrefetchBytes     = 32 << 20
	MaxBatchBytes            = 256 << 20 // hex-encoded, twice that must stay below PostgreSQL's 1 GiB message limit
	MaxPrefetch              = 65535     // the largest accepted Prefetch (AMQP's prefetch count is 16 bits)
	MaxWorkers               = 16        // the largest accepted Workers
	MaxBatchWait             = 10 * time.Second
	MaxQueueBytes            = 255  // the longest accepted Queue (AMQP short string)
	MaxConsumerBytes         = 1000 // the longest accepted Consumer
	DefaultDrainTimeout      = 10 * time.Second
	DefaultOrderingHeader    = "x-ordering-key"
)

// ConsumerConfig configures the sidecar's inbox consumer. Zero values take the defaults
// (SetDefaults); only Queue is required.
type ConsumerConfig struct {
	Queue string // queue to consume; required
	// Table is the inbox table, "name" or "schema.name" (lower-case SQL identifiers);
	// default "inbox".
	Table     string
	Consumer  string        // consumer name stored with each row; default Queue
	Prefetch  int           // unacknowledged deliveries held at most (fewer for large messages, see PrefetchBytes); default 512 (room for the batches being stored and the next ones), at most 65535
	BatchSize int           // deliveries stored per transaction; default 128, at most Prefetch
	BatchWait time.Duration // longest wait to fill a batch once it has a delivery; default 5ms
	Workers   int           // batches stored concurrently (each its own connection); default 2

	// AMQPURLs are the RabbitMQ URLs (amqp:// or amqps://), tried in turn, on which the
	// consumer keeps its own connection while it runs. Required unless a connection is
	// given with WithConnection.
	AMQPURLs []string
	// AMQPTLS configures the consumer's own amqps:// connections; nil: the system's
	// roots, no client certificate.
	AMQPTLS *tls.Config
	// ConnectionName is shown in the RabbitMQ management UI for the consumer's own
	// connection; default "sidebox inbox".
	ConnectionName string

	// BatchBytes bounds the payload bytes of one batch; a larger message is stored alone.
	// Default 4 MiB, at most 256 MiB.
	BatchBytes int

	// PrefetchBytes bounds the payload bytes of the unacknowledged deliveries held, for
	// the message sizes seen: the prefetch count is lowered (down to 1) to fit. Default
	// 32 MiB.
	PrefetchBytes int

	// Declare makes the consumer declare Queue (durable) when it does not exist.
	// Bindings bind Queue to existing exchanges and imply Declare.
	Declare  bool
	Bindings []Binding

	// OrderingHeader names the AMQP header whose string value is stored as the row's
	// ordering_key (per-key order in the Processor); default "x-ordering-key".
	OrderingHeader string

	// DrainTimeout bounds the storing of the last batch after ctx is cancelled; default 10s.
	DrainTimeout time.Duration

	// Backoff and BackoffMax pace retries of the database and of the broker channel: the
	// first delay and its cap; default 100ms and 5s.
	Backoff    time.Duration
	BackoffMax time.Duration

	// Prepare says whether the insert is a prepared statement: "auto" (default: unless
	// the connection is pooled per transaction), "on" or "off".
	Prepare string
}

// SetDefaults fills zero fields with their defaults.
func (c *ConsumerConfig) SetDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.ConnectionName == "" {
		c.ConnectionName = "sidebox inbox"
	}
	if c.Consumer == "" {
		c.Consumer = c.Queue
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.BatchSize == 0 {
		c.BatchSize = min(DefaultConsumerBatchSize, c.Prefetch)
	}
	if c.BatchWait == 0 {
		c.BatchWait = DefaultBatchWait
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = DefaultBatchBytes
	}
	if c.PrefetchBytes == 0 {
		c.PrefetchBytes = DefaultPrefetchBytes
	}
	if c.OrderingHeader == "" {
		c.OrderingHeader = DefaultOrderingHeader
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Backoff == 0 {
		c.Backoff = backoff.DatabaseBase
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(backoff.DatabaseMax, c.Backoff)
	}
	if c.Prepare == "" {
		c.Prepare = string(pg.PrepareAuto)
	}
}

// Validate checks a config after SetDefaults and reports every problem, each a
// *ConfigError (joined with errors.Join when there are several).
func (c *ConsumerConfig) Validate() error {
	var k check
	k.fail(c.Queue == "", "Queue", "must be set: it names the queue the inbox consumer reads")
	k.fail(len(c.Queue) > MaxQueueBytes, "Queue", "must be at most %d bytes, got %d", MaxQueueBytes, len(c.Queue))
	k.fail(len(c.Consumer) > MaxConsumerBytes, "Consumer", "must be at most %d bytes, got %d", MaxConsumerBytes, len(c.Consumer))
	k.table(c.Table)
	k.fail(c.Queue != "" && c.Consumer == "", "Consumer", "must be set") // defaults to Queue
	for _, u := range c.AMQPURLs {
		problem := broker.CheckURL(u)
		k.fail(problem != "", "AMQPURLs", "a URL %s", problem)
	}
	k.between("Prefetch", c.Prefetch, 1, MaxPrefetch)
	prefetchOK := c.Prefetch >= 1 && c.Prefetch <= MaxPrefetch // else only Prefetch is reported
	k.fail(c.BatchSize < 1 || prefetchOK && c.BatchSize > c.Prefetch, "BatchSize", "must be between 1 and Prefetch (%d), got %d", c.Prefetch, c.BatchSize)
	k.fail(c.BatchWait <= 0 || c.BatchWait > MaxBatchWait, "BatchWait", "must be positive and at most %s, got %s", MaxBatchWait, c.BatchWait)
	k.between("Workers", c.Workers, 1, MaxWorkers)
	k.between("BatchBytes", c.BatchBytes, 1, MaxBatchBytes)
	k.between("PrefetchBytes", c.PrefetchBytes, 1, math.MaxInt32)
	k.fail(c.DrainTimeout < 0, "DrainTimeout", "must not be negative, got %s", c.DrainTimeout)
	k.positive("Backoff", c.Backoff)
	k.fail(c.BackoffMax < c.Backoff, "BackoffMax", "must be at least Backoff (%s), got %s", c.Backoff, c.BackoffMax)
	_, err := pg.ParsePrepareMode(c.Prepare)
	k.fail(err != nil, "Prepare", "must be auto, on or off, got %q", c.Prepare)
	for _, b := range c.Bindings {
		k.fail(b.Exchange == "", "Bindings", "the default exchange cannot be bound")
	}
	return k.result()
}

// Binding binds the inbox queue to an exchange with a routing key (or pattern).
type Binding struct {
	Exchange   string
	RoutingKey string
}

func (b Binding) String() string { return b.Exchange + ":" + b.RoutingKey }

// ParseBindings parses "exchange:routing.key,exchange2:key2". The exchange ends at the
// first colon; the routing key may be empty (fanout and headers exchanges) but cannot
// contain a comma. Blanks around entries are ignored; an empty string yields no bindings.
func ParseBindings(s string) ([]Binding, error) {
	bs, err := topology.ParseBindings(s)
	if err != nil {
		return nil, err
	}
	var out []Binding
	for _, b := range bs {
		out = append(out, Binding{Exchange: b.Exchange, RoutingKey: b.RoutingKey})
	}
	return out, nil
}

// Defaults of ProcessorConfig.
const (
	DefaultProcessorBatchSize = 10
	DefaultPollInterval       = time.Second
	DefaultMaxAttempts        = 10
	DefaultRetryBackoff       = time.Second
	DefaultRetryBackoffMax    = 5 * time.Minute
	maxProcessorBatch         = inboxdb.MaxClaim // one savepoint per message; stay within PostgreSQL's subtransaction cache
)

// ProcessorConfig configures a Processor. Zero values take the defaults; Consumer is
// required.
type ProcessorConfig struct {
	Table        string        // "name" or "schema.name"; default "inbox"
	Consumer     string        // whose rows to process; required
	BatchSize    int           // rows claimed per transaction; default 10, at most 64
	PollInterval time.Duration // idle polling period; default 1s

	MaxAttempts     int           // failed handler calls before a row is dead; default 10
	RetryBackoff    time.Duration // first retry delay, doubling per attempt with jitter; default 1s
	RetryBackoffMax time.Duration // cap of the retry delay; default 5m

	// Ordered processes rows with the same ordering_key one at a time in arrival order,
	// by one Processor at a time: a batch takes a key's next rows in a run, so that one
	// busy key moves at the handler's speed, and other Processors skip the key until
	// the batch ends. A retrying or dead row blocks its key (and only its key). Rows
	// without a key are never held up.
	Ordered bool

	// Prepare says whether the claim is a prepared statement, planned once per
	// connection instead of at every batch: "auto" (default: unless db's connections
	// are pooled per transaction, which the Processor looks up with three of them for a
	// moment), "on" or "off".
	Prepare string
}

// SetDefaults fills zero fields with their defaults.
func (c *ProcessorConfig) SetDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultProcessorBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.RetryBackoffMax == 0 {
		c.RetryBackoffMax = DefaultRetryBackoffMax
	}
	if c.Prepare == "" {
		c.Prepare = string(pg.PrepareAuto)
	}
}

// Validate checks a config after SetDefaults and reports every problem, each a
// *ConfigError (joined with errors.Join when there are several).
func (c *ProcessorConfig) Validate() error {
	var k check
	k.table(c.Table)
	k.required("Consumer", c.Consumer)
	k.between("BatchSize", c.BatchSize, 1, maxProcessorBatch)
	k.positive("PollInterval", c.PollInterval)
	k.fail(c.MaxAttempts < 1, "MaxAttempts", "must be at least 1, got %d", c.MaxAttempts)
	k.positive("RetryBackoff", c.RetryBackoff)
	k.fail(c.RetryBackoffMax < c.RetryBackoff, "RetryBackoffMax", "must be at least RetryBackoff (%s), got %s", c.RetryBackoff, c.RetryBackoffMax)
	_, err := pg.ParsePrepareMode(c.Prepare)
	k.fail(err != nil, "Prepare", "must be auto, on or off, got %q", c.Prepare)
	return k.result()
}

// Defaults of PurgerConfig.
const (
	DefaultRetention      = 7 * 24 * time.Hour
	MinRetention          = time.Minute // the shortest accepted Retention
	DefaultPurgeBatchSize = 1000
	DefaultPurgeInterval  = time.Minute
)

// PurgerConfig configures the retention Purger. Zero values take the defaults.
type PurgerConfig struct {
	Table     string        // "name" or "schema.name"; default "inbox"
	Retention time.Duration // processed rows older than this are deleted; default 168h
	BatchSize int           // rows deleted per statement; default 1000
	Interval  time.Duration // pause between purge rounds; default 1m
}

// SetDefaults fills zero fields with their defaults.
func (c *PurgerConfig) SetDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultPurgeBatchSize
	}
	if c.Interval == 0 {
		c.Interval = DefaultPurgeInterval
	}
}

// Validate checks a config after SetDefaults and reports every problem, each a
// *ConfigError (joined with errors.Join when there are several).
func (c *PurgerConfig) Validate() error {
	var k check
	k.table(c.Table)
	k.fail(c.Retention < MinRetention, "Retention", "must be at least %s, got %s", MinRetention, c.Retention)
	k.between("BatchSize", c.BatchSize, 1, 100000)
	k.positive("Interval", c.Interval)
	return k.result()
}
