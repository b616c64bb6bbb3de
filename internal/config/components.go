package config

import (
	"cmp"
	"errors"
	"regexp"
	"time"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/inject"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/relay"
)

// RelayConfig maps the relay's variables onto its configuration, for the first outbox
// table. listenDSN is the connection string of its LISTEN connection, ready to use
// (SIDEBOX_LISTEN_DATABASE_URL or SIDEBOX_DATABASE_URL, completed by the caller). Call
// it after Check.
func (c *Config) RelayConfig(listenDSN string) relay.Config {
	return c.RelayConfigFor(c.Outbox, listenDSN)
}

// RelayConfigFor is RelayConfig for the outbox table t, one of Outboxes.
func (c *Config) RelayConfigFor(t pg.Table, listenDSN string) relay.Config {
	return relay.Config{
		Table:             t.String(),
		ListenDatabaseURL: listenDSN,
		BatchSize:         c.BatchSize,
		PollInterval:      c.PollInterval,
		MaxAttempts:       c.MaxAttempts,
		RetryBackoff:      c.RetryBackoff,
		RetryBackoffMax:   c.RetryBackoffMax,
		PublishTimeout:    c.PublishTimeout,
		Workers:           c.RelayWorkers,
		Prepare:           string(c.Prepare),
		BatchBytes:        c.BatchBytes,
		MaxMessageBytes:   c.MaxMessageBytes,
		Retention:         c.outboxRetention(),
		Partitions:        c.OutboxPartitions,
	}
}

// outboxRetention is SIDEBOX_OUTBOX_RETENTION, or the partitioned table's default when
// SIDEBOX_OUTBOX_PARTITIONS is daily and the variable is not set (set to 0, it is
// refused by the relay's Validate).
func (c *Config) outboxRetention() time.Duration {
	if p, err := c.OutboxPartitioning(); err == nil && p == outboxdb.Daily && !c.set["SIDEBOX_OUTBOX_RETENTION"] {
		return relay.DefaultPartitionedRetention
	}
	return c.OutboxRetention
}

// ConsumerConfig maps the inbox consumer's variables onto its configuration. Call it
// after Check.
func (c *Config) ConsumerConfig() inbox.ConsumerConfig {
	return inbox.ConsumerConfig{
		Queue:         c.InboxQueue,
		Table:         c.Inbox.String(),
		Consumer:      c.Consumer(),
		Prefetch:      c.InboxPrefetch,
		BatchSize:     c.InboxBatchSize,
		BatchBytes:    c.InboxBatchBytes,
		BatchWait:     c.InboxBatchWait,
		Workers:       c.InboxWorkers,
		Declare:       c.InboxDeclare,
		Bindings:      c.Bindings,
		DrainTimeout:  c.ShutdownTimeout,
		Prepare:       string(c.Prepare),
		PrefetchBytes: c.InboxPrefetchBytes,
	}
}

// PurgerConfig maps the inbox retention variables onto the purger's configuration.
// Call it after Check.
func (c *Config) PurgerConfig() inbox.PurgerConfig {
	return inbox.PurgerConfig{Table: c.Inbox.String(), Retention: c.InboxRetention}
}

// InjectConfig maps the SIDEBOX_INJECT_* variables onto the webhook's configuration.
func (c *Config) InjectConfig() inject.Config {
	return inject.Config{
		Addr:    c.InjectAddr,
		TLSCert: c.InjectTLSCert,
		TLSKey:  c.InjectTLSKey,
		Image:   c.InjectImage,
		Mode:    c.InjectMode,
	}
}

// relayVar and consumerVar name the variable behind a field of relay.Config and of
// inbox.ConsumerConfig (or inbox.PurgerConfig); "" for a field no variable sets.
func relayVar(field string) string {
	return map[string]string{
		"Table":           "SIDEBOX_OUTBOX_TABLE",
		"AMQPURLs":        "SIDEBOX_AMQP_URL",
		"BatchSize":       "SIDEBOX_BATCH_SIZE",
		"PollInterval":    "SIDEBOX_POLL_INTERVAL",
		"MaxAttempts":     "SIDEBOX_MAX_ATTEMPTS",
		"RetryBackoff":    "SIDEBOX_RETRY_BACKOFF",
		"RetryBackoffMax": "SIDEBOX_RETRY_BACKOFF_MAX",
		"PublishTimeout":  "SIDEBOX_PUBLISH_TIMEOUT",
		"Workers":         "SIDEBOX_RELAY_WORKERS",
		"Prepare":         "SIDEBOX_DATABASE_PREPARE",
		"BatchBytes":      "SIDEBOX_BATCH_BYTES",
		"MaxMessageBytes": "SIDEBOX_MAX_MESSAGE_BYTES",
		"Retention":       "SIDEBOX_OUTBOX_RETENTION",
		"Partitions":      "SIDEBOX_OUTBOX_PARTITIONS",
	}[field]
}

// purgerVar names the variable behind a field of inbox.PurgerConfig.
func purgerVar(field string) string {
	return map[string]string{
		"Table":     "SIDEBOX_INBOX_TABLE",
		"Retention": "SIDEBOX_INBOX_RETENTION",
	}[field]
}

func consumerVar(field string) string {
	return map[string]string{
		"Queue":         "SIDEBOX_INBOX_QUEUE",
		"Table":         "SIDEBOX_INBOX_TABLE",
		"Consumer":      "SIDEBOX_INBOX_CONSUMER",
		"AMQPURLs":      "SIDEBOX_AMQP_URL",
		"Prefetch":      "SIDEBOX_INBOX_PREFETCH",
		"BatchSize":     "SIDEBOX_INBOX_BATCH_SIZE",
		"BatchWait":     "SIDEBOX_INBOX_BATCH_WAIT",
		"Workers":       "SIDEBOX_INBOX_WORKERS",
		"BatchBytes":    "SIDEBOX_INBOX_BATCH_BYTES",
		"PrefetchBytes": "SIDEBOX_INBOX_PREFETCH_BYTES",
		"Bindings":      "SIDEBOX_INBOX_BINDINGS",
		"DrainTimeout":  "SIDEBOX_SHUTDOWN_TIMEOUT",
		"Prepare":       "SIDEBOX_DATABASE_PREPARE",
		"Retention":     "SIDEBOX_INBOX_RETENTION",
	}[field]
}

// FromComponent turns the configuration errors of the components built from the
// variables (relay, inbox consumer and purger, admission webhook) into Errors naming
// the variables, so that they are reported, and exit, as Check's are. An error that is
// not entirely made of such errors (or names a field no variable sets) is returned
// unchanged; nil stays nil.
func FromComponent(err error) error {
	if err == nil {
		return nil
	}
	var out Errors
	if !collect(err, &out) {
		return err
	}
	return out
}

// collect appends the *Error of every leaf of err's tree; false when a leaf is not a
// component's configuration error.
func collect(err error, out *Errors) bool {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			if !collect(e, out) {
				return false
			}
		}
		return true
	}
	var (
		ie *inject.ConfigError
		re *relay.ConfigError
		ce *inbox.ConfigError
	)
	var name, problem string
	switch {
	case errors.As(err, &ie):
		name, problem = ie.Var, ie.Problem
	case errors.As(err, &re):
		name, problem = relayVar(re.Field), fieldsToVars(re.Problem, relayVar)
	case errors.As(err, &ce):
		name, problem = consumerVar(ce.Field), fieldsToVars(ce.Problem, consumerVar)
	}
	if name == "" {
		return false
	}
	*out = append(*out, &Error{Var: name, Problem: problem})
	return true
}

// goName matches a word that may be a Go field name in a component's problem text.
var goName = regexp.MustCompile(`\b[A-Z][A-Za-z]+\b`)

// fieldsToVars names the variables instead of the fields a problem text refers to
// ("must be at least RetryBackoff (1m0s)" becomes "... SIDEBOX_RETRY_BACKOFF (1m0s)").
func fieldsToVars(problem string, toVar func(string) string) string {
	return goName.ReplaceAllStringFunc(problem, func(w string) string { return cmp.Or(toVar(w), w) })
}

// componentErrors turns the errors of a component's Validate, checked for group, into
// Errors naming the variables, toVar giving the variable of a field. It leaves out a
// field no variable sets (the component fills it with its default), a variable of
// another group (checked, or not used, with its own group) and a variable whose value
// did not parse (already reported), or whose problem compares it with such a variable
// (which holds its default, not the value given).
func (c *Config) componentErrors(group Group, err error, toVar func(string) string) Errors {
	var out Errors
	for _, leaf := range leaves(err) {
		var (
			re             *relay.ConfigError
			ce             *inbox.ConfigError
			field, problem string
		)
		switch {
		case errors.As(leaf, &re):
			field, problem = re.Field, re.Problem
		case errors.As(leaf, &ce):
			field, problem = ce.Field, ce.Problem
		default:
			// Validate returns only *ConfigError; anything else is a defect, reported
			// rather than lost, under the group's first variable.
			out = append(out, &Error{Var: firstVar(group), Problem: leaf.Error()})
			continue
		}
		name := toVar(field)
		if name == "" || varGroup(name) != group || c.parseErrors[name] != nil || c.refersToUnparsed(problem, toVar) {
			continue
		}
		out = append(out, &Error{Var: name, Problem: fieldsToVars(problem, toVar)})
	}
	return out
}

// refersToUnparsed reports whether a problem text names a field whose variable did
// not parse.
func (c *Config) refersToUnparsed(problem string, toVar func(string) string) bool {
	for _, w := range goName.FindAllString(problem, -1) {
		if name := toVar(w); name != "" && c.parseErrors[name] != nil {
			return true
		}
	}
	return false
}

// leaves returns the errors joined in err (itself when it joins none); nil for nil.
func leaves(err error) []error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		if err == nil {
			return nil
		}
		return []error{err}
	}
	var out []error
	for _, e := range joined.Unwrap() {
		out = append(out, leaves(e)...)
	}
	return out
}

// varGroup returns the group of a variable; firstVar the first variable of a group.
func varGroup(name string) Group {
	for _, f := range envFields() {
		if f.Tag.Get("envconfig") == name {
			return groupOf(f)
		}
	}
	return 0
}

func firstVar(g Group) string {
	for _, f := range envFields() {
		if groupOf(f) == g {
			return f.Tag.Get("envconfig")
		}
	}
	return ""
}
