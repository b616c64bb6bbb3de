// Package config reads sidebox's configuration from SIDEBOX_* environment variables
// with envconfig and validates, for each command, only the variables that command uses.
//
// Each variable is defined once: its name, group and help text in Config's tags, its
// default in defaults (a component's setting takes the component's Default constant).
// A component's setting is validated by the component alone: Check maps the variables
// onto the components' configurations (RelayConfig, ConsumerConfig, PurgerConfig,
// InjectConfig), calls their Validate and names the variable behind each field in
// error (relayVar, consumerVar). Check validates itself only the variables that are
// no component's setting (URLs, TLS files, log, HTTP address, the sidecar's timeouts).
//
// Every problem is reported at once as a *Error naming the variable; the CLI turns them
// into exit code 2. Values of URL variables are never part of an error message, since
// they may carry a password.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/lib/pq"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/inject"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/internal/topology"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// Prefix starts the name of every variable sidebox reads.
const Prefix = "SIDEBOX_"

// Config is the process's configuration. The struct tags are the source of truth for
// variable names, the group a variable belongs to and its documentation; defaults
// gives the defaults, most of them the components' own Default constants; the
// components' Validate apply the bounds, their own Min and Max constants.
//
// Tags carry the full variable name and Load passes envconfig no prefix: with a prefix,
// envconfig falls back to the unprefixed name (DATABASE_URL, LOG_LEVEL) when the
// prefixed one is unset, which would let an application's variables leak into sidebox.
type Config struct {
	DatabaseURL       string `envconfig:"SIDEBOX_DATABASE_URL" group:"database" secret:"true" desc:"PostgreSQL URL (postgres://...) or key=value connection string of the service's own database (lib/pq syntax)"`
	DatabasePrepare   string `envconfig:"SIDEBOX_DATABASE_PREPARE" group:"database" desc:"prepare the frequent queries on the server: auto (unless the connection is pooled per transaction, as by PgBouncer in transaction mode), on (also behind a pooler that keeps prepared statements, PgBouncer 1.21+ with max_prepared_statements) or off"`
	ListenDatabaseURL string `envconfig:"SIDEBOX_LISTEN_DATABASE_URL" group:"relay" secret:"true" desc:"direct connection (not through a transaction pooler) for the relay's LISTEN, same syntax as SIDEBOX_DATABASE_URL; unset: SIDEBOX_DATABASE_URL"`
	AMQPURL           string `envconfig:"SIDEBOX_AMQP_URL" group:"broker" secret:"true" desc:"RabbitMQ URL, amqp:// or amqps://; a comma-separated list for a cluster, tried in turn"`

	AMQPCAFile   string `envconfig:"SIDEBOX_AMQP_CA_FILE" group:"broker" desc:"PEM file of the certificate authorities that amqps:// servers are verified against, instead of the system's; unset: the system's (SSL_CERT_FILE and SSL_CERT_DIR apply)"`
	AMQPCertFile string `envconfig:"SIDEBOX_AMQP_CERT_FILE" group:"broker" desc:"PEM client certificate (chain) presented to amqps:// servers, for mutual TLS; needs SIDEBOX_AMQP_KEY_FILE"`
	AMQPKeyFile  string `envconfig:"SIDEBOX_AMQP_KEY_FILE" group:"broker" desc:"PEM private key of SIDEBOX_AMQP_CERT_FILE"`

	OutboxTable      string `envconfig:"SIDEBOX_OUTBOX_TABLE" group:"outbox" desc:"outbox table, optionally schema-qualified (app.outbox); a comma-separated list for several (one relay loop each), as one per tenant schema (a.outbox,b.outbox)"`
	OutboxPartitions string `envconfig:"SIDEBOX_OUTBOX_PARTITIONS" group:"outbox" desc:"layout of the outbox table: none, or daily for a table partitioned by day (PARTITION BY RANGE (created_at)) for very high volume: migrate up creates it so, the relay keeps published rows, makes each day's partition ahead and drops a day's partition once it is older than SIDEBOX_OUTBOX_RETENTION and holds no unpublished row"`
	InboxTable       string `envconfig:"SIDEBOX_INBOX_TABLE" group:"inbox" desc:"inbox table, optionally schema-qualified; a comma-separated list for migrate and status (a sidecar that consumes SIDEBOX_INBOX_QUEUE takes one)"`

	HTTPAddr        string        `envconfig:"SIDEBOX_HTTP_ADDR" group:"server" desc:"listen address of /healthz, /readyz and /metrics"`
	ShutdownTimeout time.Duration `envconfig:"SIDEBOX_SHUTDOWN_TIMEOUT" group:"server" desc:"longest drain after SIGTERM/SIGINT; past it the process exits with code 1"`
	StatusInterval  time.Duration `envconfig:"SIDEBOX_STATUS_INTERVAL" group:"server" desc:"refresh period of the backlog gauges (pending, retrying, dead, blocked keys, oldest pending age, inbox unprocessed and dead)"`
	LogLevel        string        `envconfig:"SIDEBOX_LOG_LEVEL" group:"log" desc:"debug, info, warn or error"`
	LogFormat       string        `envconfig:"SIDEBOX_LOG_FORMAT" group:"log" desc:"json or console"`

	BatchSize       int           `envconfig:"SIDEBOX_BATCH_SIZE" group:"relay" desc:"rows claimed per relay batch ({min}-{max})"`
	PollInterval    time.Duration `envconfig:"SIDEBOX_POLL_INTERVAL" group:"relay" desc:"idle polling period of the relay; a notification from a writer wakes it earlier"`
	MaxAttempts     int           `envconfig:"SIDEBOX_MAX_ATTEMPTS" group:"relay" desc:"failed publishes (nack or return) before a row is kept as dead ({min}-{max})"`
	RetryBackoff    time.Duration `envconfig:"SIDEBOX_RETRY_BACKOFF" group:"relay" desc:"first retry delay of a failed row; doubles per attempt, with jitter"`
	RetryBackoffMax time.Duration `envconfig:"SIDEBOX_RETRY_BACKOFF_MAX" group:"relay" desc:"cap of the retry delay"`
	PublishTimeout  time.Duration `envconfig:"SIDEBOX_PUBLISH_TIMEOUT" group:"relay" desc:"longest wait for the broker's confirms of one batch"`
	RelayWorkers    int           `envconfig:"SIDEBOX_RELAY_WORKERS" group:"relay" desc:"batches in flight at once, each in its own transaction and channel ({min}-{max})"`
	BatchBytes      int           `envconfig:"SIDEBOX_BATCH_BYTES" group:"relay" desc:"payload bytes claimed per relay batch ({min}-{max}); a larger row goes alone"`
	OutboxRetention time.Duration `envconfig:"SIDEBOX_OUTBOX_RETENTION" group:"relay" desc:"keep published outbox rows this long for audit (published_at set), then purge them; 0: delete each row once the broker confirmed it (at least {min} otherwise); with SIDEBOX_OUTBOX_PARTITIONS=daily it must be above 0 and defaults to 72h: a day's partition is dropped once the window has passed"`
	MaxMessageBytes int           `envconfig:"SIDEBOX_MAX_MESSAGE_BYTES" group:"relay" desc:"largest payload the broker takes, its max_message_size ({min}-{max}); a larger row is kept as dead at once, unsent"`

	OutboxDeclare  string `envconfig:"SIDEBOX_OUTBOX_DECLARE" group:"relay" desc:"exchange[:type],... exchanges the service publishes to, declared durable before the relay starts (type direct, fanout, topic or headers; default topic); an existing exchange of another definition stops sidebox with exit code 2"`
	OutboxBindings string `envconfig:"SIDEBOX_OUTBOX_BINDINGS" group:"relay" desc:"queue:exchange:routing.key,... queues declared (durable, when missing) and bound before the relay starts, so that the first messages have somewhere to go"`

	InboxQueue     string        `envconfig:"SIDEBOX_INBOX_QUEUE" group:"consumer" desc:"queue the inbox consumer reads; unset: no inbox consumer (sidebox inbox requires it)"`
	InboxConsumer  string        `envconfig:"SIDEBOX_INBOX_CONSUMER" group:"consumer" desc:"consumer name stored with each inbox row (deduplication is per consumer); default: the queue name"`
	InboxPrefetch  int           `envconfig:"SIDEBOX_INBOX_PREFETCH" group:"consumer" desc:"unacknowledged deliveries the inbox consumer holds ({min}-{max})"`
	InboxBatchSize int           `envconfig:"SIDEBOX_INBOX_BATCH_SIZE" group:"consumer" desc:"deliveries stored per transaction (1 to the prefetch)"`
	InboxWorkers   int           `envconfig:"SIDEBOX_INBOX_WORKERS" group:"consumer" desc:"batches stored at once, each in its own transaction ({min}-{max})"`
	InboxBatchWait time.Duration `envconfig:"SIDEBOX_INBOX_BATCH_WAIT" group:"consumer" desc:"longest wait to fill a batch once it holds a delivery (at most {max})"`
	InboxRetention time.Duration `envconfig:"SIDEBOX_INBOX_RETENTION" group:"consumer" desc:"processed inbox rows older than this are deleted (at least {min})"`
	InboxDeclare   bool          `envconfig:"SIDEBOX_INBOX_DECLARE" group:"consumer" desc:"declare the inbox queue (durable) before consuming; otherwise it must exist"`
	InboxBindings  string        `envconfig:"SIDEBOX_INBOX_BINDINGS" group:"consumer" desc:"exchange:routing.key,... bindings of the inbox queue to existing exchanges; implies SIDEBOX_INBOX_DECLARE"`

	// Memory bounds of the inbox consumer, in bytes of message payload.
	InboxBatchBytes    int `envconfig:"SIDEBOX_INBOX_BATCH_BYTES" group:"consumer" desc:"payload bytes stored per transaction at most ({min} to {max}); a larger message is stored alone"`
	InboxPrefetchBytes int `envconfig:"SIDEBOX_INBOX_PREFETCH_BYTES" group:"consumer" desc:"payload bytes of unacknowledged deliveries the inbox consumer aims to hold: it lowers its prefetch count (down to 1) for the message sizes it sees"`

	InjectAddr    string `envconfig:"SIDEBOX_INJECT_ADDR" group:"inject" desc:"listen address (HTTPS) of the admission webhook (sidebox inject)"`
	InjectTLSCert string `envconfig:"SIDEBOX_INJECT_TLS_CERT" group:"inject" desc:"path of the webhook's TLS certificate (PEM)"`
	InjectTLSKey  string `envconfig:"SIDEBOX_INJECT_TLS_KEY" group:"inject" desc:"path of the webhook's TLS private key (PEM)"`
	InjectImage   string `envconfig:"SIDEBOX_INJECT_IMAGE" group:"inject" desc:"sidecar image the webhook injects into pods that do not name their own"`
	InjectMode    string `envconfig:"SIDEBOX_INJECT_MODE" group:"inject" desc:"kind of sidecar injected by default: native (an init container with restartPolicy Always, Kubernetes 1.29 and later) or classic (a regular container)"`

	// Derived by Check from the variables above.
	Outbox   pg.Table   // the first of Outboxes
	Inbox    pg.Table   // the first of Inboxes
	Outboxes []pg.Table // SIDEBOX_OUTBOX_TABLE, a comma-separated list
	Inboxes  []pg.Table // SIDEBOX_INBOX_TABLE, a comma-separated list
	AMQPURLs []string
	AMQPTLS  *tls.Config // from the SIDEBOX_AMQP_*_FILE variables; nil when none is set
	Bindings []inbox.Binding
	Prepare  pg.PrepareMode
	Topology topology.Topology // SIDEBOX_OUTBOX_DECLARE and SIDEBOX_OUTBOX_BINDINGS

	// set holds the variables set in the environment, even to "".
	set map[string]bool

	// parseErrors holds envconfig's conversion failures by variable; Check reports those
	// of the groups it is asked about.
	parseErrors map[string]*Error
}

// defaults is the configuration when no variable is set. A component's setting
// takes the component's default: each default is defined once.
func defaults() Config {
	return Config{
		DatabasePrepare:  string(pg.PrepareAuto),
		OutboxTable:      outbox.DefaultTable,
		OutboxPartitions: string(outboxdb.NotPartitioned),
		InboxTable:       inbox.DefaultTable,

		HTTPAddr:        ":9719",
		ShutdownTimeout: 30 * time.Second,
		StatusInterval:  15 * time.Second,
		LogLevel:        "info",
		LogFormat:       "json",

		BatchSize:       relay.DefaultBatchSize,
		PollInterval:    relay.DefaultPollInterval,
		MaxAttempts:     relay.DefaultMaxAttempts,
		RetryBackoff:    relay.DefaultRetryBackoff,
		RetryBackoffMax: relay.DefaultRetryBackoffMax,
		PublishTimeout:  relay.DefaultPublishTimeout,
		RelayWorkers:    relay.DefaultWorkers,
		BatchBytes:      relay.DefaultBatchBytes,
		MaxMessageBytes: relay.DefaultMaxMessageBytes,

		InboxPrefetch:      inbox.DefaultPrefetch,
		InboxBatchSize:     inbox.DefaultConsumerBatchSize,
		InboxWorkers:       inbox.DefaultWorkers,
		InboxBatchWait:     inbox.DefaultBatchWait,
		InboxRetention:     inbox.DefaultRetention,
		InboxBatchBytes:    inbox.DefaultBatchBytes,
		InboxPrefetchBytes: inbox.DefaultPrefetchBytes,

		InjectAddr: ":8443",
		InjectMode: inject.ModeNative,
	}
}

// Group is a set of variables that some commands use.
type Group uint

// The variable groups. A command checks the union of the groups it uses.
const (
	Database Group = 1 << iota // SIDEBOX_DATABASE_URL, required
	Broker                     // SIDEBOX_AMQP_URL, required
	Outbox                     // SIDEBOX_OUTBOX_TABLE
	Inbox                      // SIDEBOX_INBOX_TABLE
	Server                     // HTTP address, shutdown timeout, status interval
	Log                        // log level and format
	Relay                      // relay knobs
	Consumer                   // inbox consumer knobs; SIDEBOX_INBOX_QUEUE required
	Inject                     // admission webhook
)

// groupOf returns the group named by a field's group tag.
func groupOf(f reflect.StructField) Group {
	switch f.Tag.Get("group") {
	case "database":
		return Database
	case "broker":
		return Broker
	case "outbox":
		return Outbox
	case "inbox":
		return Inbox
	case "server":
		return Server
	case "log":
		return Log
	case "relay":
		return Relay
	case "consumer":
		return Consumer
	case "inject":
		return Inject
	}
	panic("config: field " + f.Name + " has no valid group tag") // a defect, caught by every test
}

// Var describes one variable, for documentation and the start-up log.
type Var struct {
	Name        string
	Default     string
	Description string
	Secret      bool
}

// Vars lists every variable sidebox reads, in declaration order.
func Vars() []Var {
	var out []Var
	def := reflect.ValueOf(defaults())
	for _, f := range envFields() {
		out = append(out, Var{
			Name:        f.Tag.Get("envconfig"),
			Default:     formatDefault(def.FieldByIndex(f.Index)),
			Description: help(f.Tag.Get("envconfig"), f.Tag.Get("desc")),
			Secret:      f.Tag.Get("secret") == "true",
		})
	}
	return out
}

// formatDefault writes a default as a user would set it: "" for none, 5m rather
// than 5m0s.
func formatDefault(v reflect.Value) string {
	if v.IsZero() && v.Kind() != reflect.Bool {
		return ""
	}
	if d, ok := v.Interface().(time.Duration); ok {
		s := d.String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	}
	return fmt.Sprint(v.Interface())
}

func envFields() []reflect.StructField {
	var out []reflect.StructField
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("envconfig") != "" {
			out = append(out, f)
		}
	}
	return out
}

// Load reads every variable. Values that do not convert to their field's type are
// remembered, not returned: Check reports them for the commands that use them.
func Load() *Config {
	c := defaults()
	c.parseErrors = map[string]*Error{}
	c.set = map[string]bool{}
	v := reflect.ValueOf(&c).Elem()
	for _, f := range envFields() {
		_, c.set[f.Tag.Get("envconfig")] = os.LookupEnv(f.Tag.Get("envconfig"))
		// One field at a time, so that one bad value does not hide the next one. The
		// field starts at its default, which envconfig keeps when the variable is unset.
		one := reflect.New(reflect.StructOf([]reflect.StructField{{Name: f.Name, Type: f.Type, Tag: f.Tag}}))
		one.Elem().Field(0).Set(v.FieldByIndex(f.Index))
		err := envconfig.Process("", one.Interface())
		if err == nil {
			v.FieldByIndex(f.Index).Set(one.Elem().Field(0))
			continue
		}
		name := f.Tag.Get("envconfig")
		c.parseErrors[name] = &Error{Var: name, Problem: parseProblem(f, err)}
	}
	return &c
}

// parseProblem describes a value envconfig could not convert, echoing it only when the
// variable is not secret.
func parseProblem(f reflect.StructField, err error) string {
	want := "a valid " + f.Type.String()
	switch {
	case f.Type == reflect.TypeFor[time.Duration]():
		want = "a duration such as 500ms, 30s, 5m or 1h"
	case f.Type.Kind() == reflect.Int:
		want = "an integer"
	case f.Type.Kind() == reflect.Bool:
		want = "true or false"
	}
	if f.Tag.Get("secret") == "true" {
		return "must be " + want
	}
	got := ""
	if pe, ok := err.(*envconfig.ParseError); ok {
		got = pe.Value
	}
	return fmt.Sprintf("must be %s, got %q", want, got)
}

// Consumer returns the inbox consumer name: SIDEBOX_INBOX_CONSUMER, else the queue.
func (c *Config) Consumer() string {
	if c.InboxConsumer != "" {
		return c.InboxConsumer
	}
	return c.InboxQueue
}

// Check validates the variables of the given groups and fills the derived fields.
// It returns nil or an Errors listing every problem, in variable order.
func (c *Config) Check(groups Group) error {
	var errs Errors
	bad := func(name, format string, args ...any) {
		errs = append(errs, &Error{Var: name, Problem: fmt.Sprintf(format, args...)})
	}
	order := map[string]int{}
	for i, f := range envFields() {
		name := f.Tag.Get("envconfig")
		order[name] = i
		if groups&groupOf(f) == 0 {
			continue
		}
		if pe := c.parseErrors[name]; pe != nil {
			errs = append(errs, pe)
		}
	}
	parsed := func(name string) bool { return c.parseErrors[name] == nil }

	if groups&Database != 0 {
		if p := checkDatabaseURL(c.DatabaseURL); p != "" {
			bad("SIDEBOX_DATABASE_URL", "%s", p)
		}
		m, err := pg.ParsePrepareMode(c.DatabasePrepare)
		if err != nil {
			bad("SIDEBOX_DATABASE_PREPARE", "%v", err)
		}
		c.Prepare = m
	}
	if groups&Broker != 0 {
		urls, p := checkAMQPURLs(c.AMQPURL)
		if p != "" {
			bad("SIDEBOX_AMQP_URL", "%s", p)
		}
		c.AMQPURLs = urls
		c.AMQPTLS = c.checkAMQPTLS(bad)
	}
	c.checkTables(groups, bad)
	if groups&Server != 0 {
		if p := checkAddr(c.HTTPAddr); p != "" {
			bad("SIDEBOX_HTTP_ADDR", "%s", p)
		}
		positive(bad, parsed, "SIDEBOX_SHUTDOWN_TIMEOUT", c.ShutdownTimeout)
		positive(bad, parsed, "SIDEBOX_STATUS_INTERVAL", c.StatusInterval)
	}
	if groups&Log != 0 {
		switch strings.ToLower(c.LogLevel) {
		case "debug", "info", "warn", "error":
		default:
			bad("SIDEBOX_LOG_LEVEL", "must be debug, info, warn or error, got %q", c.LogLevel)
		}
		if f := strings.ToLower(c.LogFormat); f != "json" && f != "console" {
			bad("SIDEBOX_LOG_FORMAT", "must be json or console, got %q", c.LogFormat)
		}
	}
	if groups&Relay != 0 {
		if c.ListenDatabaseURL != "" {
			if p := checkDatabaseURL(c.ListenDatabaseURL); p != "" {
				bad("SIDEBOX_LISTEN_DATABASE_URL", "%s", p)
			}
		}
		exchanges, err := topology.ParseExchanges(c.OutboxDeclare)
		if err != nil {
			bad("SIDEBOX_OUTBOX_DECLARE", "%v", err)
		}
		bindings, err := topology.ParseQueueBindings(c.OutboxBindings)
		if err != nil {
			bad("SIDEBOX_OUTBOX_BINDINGS", "%v", err)
		}
		c.Topology = topology.Topology{Exchanges: exchanges, Bindings: bindings}
		// The relay validates its own configuration.
		errs = append(errs, c.componentErrors(Relay, c.RelayConfig("").Validate(), relayVar)...)
	}
	if groups&Consumer != 0 {
		b, err := inbox.ParseBindings(c.InboxBindings)
		if err != nil {
			bad("SIDEBOX_INBOX_BINDINGS", "%v", err)
		}
		c.Bindings = b
		// The consumer and the purger validate their own configurations.
		cc, pc := c.ConsumerConfig(), c.PurgerConfig()
		errs = append(errs, c.componentErrors(Consumer, cc.Validate(), consumerVar)...)
		errs = append(errs, c.componentErrors(Consumer, pc.Validate(), purgerVar)...)
	}
	if groups&Inject != 0 {
		// The webhook validates its own configuration; its errors name the variables.
		if es, ok := FromComponent(c.InjectConfig().Validate()).(Errors); ok {
			errs = append(errs, es...)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *Error) int { return order[a.Var] - order[b.Var] })
	return errs
}

// checkAMQPTLS reads the TLS files of the AMQP connection; nil when none is set.
func (c *Config) checkAMQPTLS(bad func(string, string, ...any)) *tls.Config {
	if c.AMQPCAFile == "" && c.AMQPCertFile == "" && c.AMQPKeyFile == "" {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	ok := true
	if c.AMQPCAFile != "" {
		pem, err := os.ReadFile(c.AMQPCAFile)
		switch {
		case err != nil:
			bad("SIDEBOX_AMQP_CA_FILE", "cannot read it: %v", fileError(err))
			ok = false
		default:
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				bad("SIDEBOX_AMQP_CA_FILE", "%s holds no PEM certificate", c.AMQPCAFile)
				ok = false
			}
		}
	}
	switch {
	case c.AMQPCertFile == "" && c.AMQPKeyFile == "":
	case c.AMQPCertFile == "":
		bad("SIDEBOX_AMQP_CERT_FILE", "must be set with SIDEBOX_AMQP_KEY_FILE")
		ok = false
	case c.AMQPKeyFile == "":
		bad("SIDEBOX_AMQP_KEY_FILE", "must be set with SIDEBOX_AMQP_CERT_FILE")
		ok = false
	default:
		cert, err := tls.LoadX509KeyPair(c.AMQPCertFile, c.AMQPKeyFile)
		if err != nil {
			// The error names files and formats, never key material.
			bad("SIDEBOX_AMQP_CERT_FILE", "cannot load it with SIDEBOX_AMQP_KEY_FILE: %v", fileError(err))
			ok = false
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if !ok {
		return nil
	}
	return cfg
}

// fileError drops the operation from a file error ("open /x: no such file or
// directory" becomes "/x: no such file or directory").
func fileError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

func positive(bad func(string, string, ...any), parsed func(string) bool, name string, d time.Duration) {
	if parsed(name) && d <= 0 {
		bad(name, "must be a positive duration, got %q", d.String())
	}
}

// limits returns the bounds of a variable, as given by its component; ok is false for
// a variable with none. The component's Validate checks them; the variable's help text
// shows them, where {min} and {max} stand for them.
func limits(name string) (lo, hi any, ok bool) {
	switch name {
	case "SIDEBOX_BATCH_SIZE":
		return 1, relay.MaxBatchSize, true
	case "SIDEBOX_MAX_ATTEMPTS":
		return 1, relay.MaxMaxAttempts, true
	case "SIDEBOX_RELAY_WORKERS":
		return 1, relay.MaxWorkers, true
	case "SIDEBOX_BATCH_BYTES":
		return relay.MinBatchBytes, relay.MaxBatchBytes, true
	case "SIDEBOX_OUTBOX_RETENTION":
		return relay.MinRetention, time.Duration(math.MaxInt64), true
	case "SIDEBOX_MAX_MESSAGE_BYTES":
		return relay.MinMaxMessageBytes, relay.MaxMaxMessageBytes, true
	case "SIDEBOX_INBOX_PREFETCH":
		return 1, inbox.MaxPrefetch, true
	case "SIDEBOX_INBOX_WORKERS":
		return 1, inbox.MaxWorkers, true
	case "SIDEBOX_INBOX_BATCH_BYTES":
		return 1, inbox.MaxBatchBytes, true
	case "SIDEBOX_INBOX_PREFETCH_BYTES":
		return 1, math.MaxInt32, true
	case "SIDEBOX_INBOX_BATCH_WAIT":
		return time.Duration(0), inbox.MaxBatchWait, true
	case "SIDEBOX_INBOX_RETENTION":
		return inbox.MinRetention, time.Duration(math.MaxInt64), true
	}
	return nil, nil, false
}

// help fills a description's {min} and {max} with the variable's limits.
func help(name, desc string) string {
	lo, hi, ok := limits(name)
	if !ok {
		return desc
	}
	return strings.NewReplacer("{min}", formatDefault(reflect.ValueOf(lo)), "{max}", formatDefault(reflect.ValueOf(hi))).Replace(desc)
}

// checkDatabaseURL returns what is wrong with a lib/pq connection string, without
// quoting it: neither the URL parser's nor lib/pq's messages are safe to show, as they
// may repeat part of a password.
func checkDatabaseURL(s string) string {
	const forms = "a postgres:// or postgresql:// URL or a key=value connection string (lib/pq syntax)"
	switch {
	case strings.TrimSpace(s) == "":
		return "must be set to " + forms
	case strings.Contains(s, "://"):
		u, err := url.Parse(s)
		if err != nil {
			return "is not a valid URL (the value is not shown, it may contain a password); want " + forms
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return fmt.Sprintf("has scheme %q; want %s", u.Scheme, forms)
		}
	case !strings.Contains(s, "="):
		return "must be " + forms + " (the value is not shown, it may contain a password)"
	}
	if _, err := pq.NewConfig(s); err != nil {
		if strings.Contains(err.Error(), "environment variable $PG") {
			// lib/pq refuses some libpq variables; its message names only the variable.
			return "cannot be used: " + err.Error()
		}
		return "is not a valid connection string (the value is not shown, it may contain a password); want " + forms
	}
	return ""
}

// checkAMQPURLs splits the comma-separated list and checks every item.
func checkAMQPURLs(s string) ([]string, string) {
	if strings.TrimSpace(s) == "" {
		return nil, "must be set to an amqp:// or amqps:// URL, or a comma-separated list of them"
	}
	var urls []string
	parts := strings.Split(s, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		which := "the value"
		if len(parts) > 1 {
			which = fmt.Sprintf("item %d of %d", i+1, len(parts))
		}
		if p == "" {
			return nil, which + " is empty"
		}
		if problem := broker.CheckURL(p); problem != "" {
			return nil, which + " " + problem
		}
		urls = append(urls, p)
	}
	return urls, ""
}

func checkAddr(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("must be host:port or :port, got %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("must end in a port number 0-65535, got %q", addr)
	}
	return ""
}

// Unknown returns the names of set SIDEBOX_* variables that sidebox does not read,
// sorted; typically a misspelling worth a warning.
func Unknown() []string {
	known := map[string]bool{}
	for _, v := range Vars() {
		known[v.Name] = true
	}
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, Prefix) && !known[name] && !kubernetesServiceVar(name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// kubernetesServiceVar reports names Kubernetes sets for a Service called "sidebox"
// (SIDEBOX_PORT, SIDEBOX_SERVICE_HOST, SIDEBOX_PORT_9719_TCP_ADDR ...).
func kubernetesServiceVar(name string) bool {
	rest := strings.TrimPrefix(name, Prefix)
	return rest == "PORT" || strings.HasPrefix(rest, "PORT_") || strings.HasPrefix(rest, "SERVICE_")
}

// Redacted returns every variable with its effective value, secrets masked, for the
// start-up log line.
func (c *Config) Redacted() map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(c).Elem()
	for _, f := range envFields() {
		name := f.Tag.Get("envconfig")
		val := fmt.Sprint(v.FieldByIndex(f.Index).Interface())
		switch {
		case name == "SIDEBOX_AMQP_URL":
			val = redact.URLs(val)
		case f.Tag.Get("secret") == "true":
			val = redact.URL(val)
		}
		out[name] = val
	}
	return out
}
