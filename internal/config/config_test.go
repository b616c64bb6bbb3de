package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const secret = "s3cr3t-pw"

// clearEnv unsets every SIDEBOX_ variable for the test (restored afterwards).
func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, Prefix) {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func setEnv(t *testing.T, env map[string]string) {
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func TestDefaults(t *testing.T) {
	setEnv(t, map[string]string{
		"SIDEBOX_DATABASE_URL": "postgres://u:" + secret + "@db/app",
		"SIDEBOX_AMQP_URL":     "amqp://u:" + secret + "@mq1/, amqps://mq2:5671/vh",
		"SIDEBOX_INBOX_QUEUE":  "orders.inbox",
	})
	c := Load()
	if err := c.Check(Database | Broker | Outbox | Inbox | Server | Log | Relay | Consumer); err != nil {
		t.Fatal(err)
	}
	if c.Outbox.String() != "outbox" || c.Inbox.String() != "inbox" {
		t.Errorf("tables = %v, %v", c.Outbox, c.Inbox)
	}
	if len(c.AMQPURLs) != 2 || c.AMQPURLs[1] != "amqps://mq2:5671/vh" {
		t.Errorf("AMQPURLs = %q", c.AMQPURLs)
	}
	if c.BatchSize != 500 || c.PollInterval != time.Second || c.RetryBackoffMax != 5*time.Minute ||
		c.RelayWorkers != 2 || c.InboxPrefetch != 512 || c.InboxBatchWait != 5*time.Millisecond ||
		c.InboxRetention != 168*time.Hour || c.ShutdownTimeout != 30*time.Second || c.StatusInterval != 15*time.Second ||
		c.HTTPAddr != ":9719" || c.LogLevel != "info" || c.LogFormat != "json" {
		t.Errorf("defaults = %+v", c)
	}
	if c.Prepare != "auto" || c.ListenDatabaseURL != "" {
		t.Errorf("Prepare = %q, ListenDatabaseURL = %q; want auto and unset", c.Prepare, c.ListenDatabaseURL)
	}
	if c.Consumer() != "orders.inbox" {
		t.Errorf("Consumer() = %q, want the queue", c.Consumer())
	}
	red := c.Redacted()
	if strings.Contains(red["SIDEBOX_DATABASE_URL"], secret) || strings.Contains(red["SIDEBOX_AMQP_URL"], secret) {
		t.Errorf("Redacted leaks the password: %v", red)
	}
	if !strings.Contains(red["SIDEBOX_AMQP_URL"], "mq2") || red["SIDEBOX_BATCH_SIZE"] != "500" {
		t.Errorf("Redacted = %v", red)
	}
}

func TestErrors(t *testing.T) {
	all := Database | Broker | Outbox | Inbox | Server | Log | Relay | Consumer
	tests := []struct {
		name   string
		env    map[string]string
		groups Group
		want   []string // one expected line per error, in order
	}{
		{"batch size", map[string]string{"SIDEBOX_BATCH_SIZE": "0"}, Relay,
			[]string{`SIDEBOX_BATCH_SIZE: must be between 1 and 10000, got 0`}},
		{"duration", map[string]string{"SIDEBOX_POLL_INTERVAL": "fast"}, Relay,
			[]string{`SIDEBOX_POLL_INTERVAL: must be a duration such as 500ms, 30s, 5m or 1h, got "fast"`}},
		{"negative duration", map[string]string{"SIDEBOX_PUBLISH_TIMEOUT": "-1s"}, Relay,
			[]string{`SIDEBOX_PUBLISH_TIMEOUT: must be positive, got -1s`}},
		{"backoff cap", map[string]string{"SIDEBOX_RETRY_BACKOFF": "1m", "SIDEBOX_RETRY_BACKOFF_MAX": "10s"}, Relay,
			[]string{`SIDEBOX_RETRY_BACKOFF_MAX: must be at least SIDEBOX_RETRY_BACKOFF (1m0s), got 10s`}},
		{"table", map[string]string{"SIDEBOX_OUTBOX_TABLE": "Outbox; drop table x"}, Outbox,
			[]string{`SIDEBOX_OUTBOX_TABLE: "Outbox; drop table x" is not a lower-case SQL identifier`}},
		{"same tables", map[string]string{"SIDEBOX_OUTBOX_TABLE": "app.box", "SIDEBOX_INBOX_TABLE": "app.box"}, Outbox | Inbox,
			[]string{`SIDEBOX_INBOX_TABLE: must differ from SIDEBOX_OUTBOX_TABLE`}},
		{"partitions", map[string]string{"SIDEBOX_OUTBOX_PARTITIONS": "weekly"}, Outbox,
			[]string{`SIDEBOX_OUTBOX_PARTITIONS: must be none or daily, got "weekly"`}},
		{"partitions without retention", map[string]string{"SIDEBOX_OUTBOX_PARTITIONS": "daily", "SIDEBOX_OUTBOX_RETENTION": "0"}, Relay,
			[]string{`SIDEBOX_OUTBOX_RETENTION: must be above 0 with a table partitioned by day (SIDEBOX_OUTBOX_PARTITIONS daily)`}},
		{"partitioned table name", map[string]string{"SIDEBOX_OUTBOX_PARTITIONS": "daily", "SIDEBOX_OUTBOX_TABLE": "app." + strings.Repeat("o", 54)}, Outbox,
			[]string{`SIDEBOX_OUTBOX_TABLE: "` + strings.Repeat("o", 54) + `" is longer than 53 characters`}},
		{"table list item", map[string]string{"SIDEBOX_OUTBOX_TABLE": "a.outbox,B.outbox"}, Outbox,
			[]string{`SIDEBOX_OUTBOX_TABLE: item 2 of 2: "B" is not a lower-case SQL identifier`}},
		{"table list empty item", map[string]string{"SIDEBOX_OUTBOX_TABLE": "a.outbox,,b.outbox"}, Outbox,
			[]string{`SIDEBOX_OUTBOX_TABLE: item 2 of 3: empty`}},
		{"table list duplicate", map[string]string{"SIDEBOX_OUTBOX_TABLE": "a.outbox, b.outbox ,a.outbox"}, Outbox,
			[]string{`SIDEBOX_OUTBOX_TABLE: lists a.outbox twice`}},
		{"inbox list duplicate", map[string]string{"SIDEBOX_INBOX_TABLE": "a.inbox,a.inbox"}, Inbox,
			[]string{`SIDEBOX_INBOX_TABLE: lists a.inbox twice`}},
		{"inbox in outbox list", map[string]string{"SIDEBOX_OUTBOX_TABLE": "a.box,b.box", "SIDEBOX_INBOX_TABLE": "c.box,b.box"}, Outbox | Inbox,
			[]string{`SIDEBOX_INBOX_TABLE: must differ from SIDEBOX_OUTBOX_TABLE, both name "b.box"`}},
		{"inbox list with a consumer", map[string]string{"SIDEBOX_INBOX_QUEUE": "q", "SIDEBOX_INBOX_TABLE": "a.inbox,b.inbox"}, Inbox | Consumer,
			[]string{`SIDEBOX_INBOX_TABLE: lists 2 tables, but the consumer of SIDEBOX_INBOX_QUEUE stores into one`}},
		{"amqp scheme", map[string]string{"SIDEBOX_AMQP_URL": "amqp://h/,http://u:" + secret + "@h/"}, Broker,
			[]string{`SIDEBOX_AMQP_URL: item 2 of 2 has scheme "http"; want amqp:// or amqps://`}},
		{"amqp without scheme", map[string]string{"SIDEBOX_AMQP_URL": "u:" + secret + "@h"}, Broker,
			[]string{`SIDEBOX_AMQP_URL: the value is not a URL (not shown`}},
		{"database scheme", map[string]string{"SIDEBOX_DATABASE_URL": "mysql://u:" + secret + "@h/db"}, Database,
			[]string{`SIDEBOX_DATABASE_URL: has scheme "mysql"`}},
		{"database garbage", map[string]string{"SIDEBOX_DATABASE_URL": "host=h password='" + secret}, Database,
			[]string{`SIDEBOX_DATABASE_URL: is not a valid connection string (the value is not shown`}},
		{"prepare mode", map[string]string{"SIDEBOX_DATABASE_URL": "postgres://h/db", "SIDEBOX_DATABASE_PREPARE": "sometimes"}, Database,
			[]string{`SIDEBOX_DATABASE_PREPARE: must be auto, on or off, got "sometimes"`}},
		{"listen database scheme", map[string]string{"SIDEBOX_LISTEN_DATABASE_URL": "mysql://u:" + secret + "@h/db"}, Relay,
			[]string{`SIDEBOX_LISTEN_DATABASE_URL: has scheme "mysql"`}},
		{"missing database", nil, Database,
			[]string{`SIDEBOX_DATABASE_URL: must be set`}},
		{"missing queue", nil, Consumer,
			[]string{`SIDEBOX_INBOX_QUEUE: must be set`}},
		{"inbox batch over prefetch", map[string]string{"SIDEBOX_INBOX_QUEUE": "q", "SIDEBOX_INBOX_PREFETCH": "10", "SIDEBOX_INBOX_BATCH_SIZE": "11"}, Consumer,
			[]string{`SIDEBOX_INBOX_BATCH_SIZE: must be between 1 and SIDEBOX_INBOX_PREFETCH (10), got 11`}},
		{"inbox workers", map[string]string{"SIDEBOX_INBOX_QUEUE": "q", "SIDEBOX_INBOX_WORKERS": "17"}, Consumer,
			[]string{`SIDEBOX_INBOX_WORKERS: must be between 1 and 16, got 17`}},
		{"bindings", map[string]string{"SIDEBOX_INBOX_QUEUE": "q", "SIDEBOX_INBOX_BINDINGS": "orders"}, Consumer,
			[]string{`SIDEBOX_INBOX_BINDINGS: binding "orders" has no colon`}},
		{"bool", map[string]string{"SIDEBOX_INBOX_QUEUE": "q", "SIDEBOX_INBOX_DECLARE": "yes please"}, Consumer,
			[]string{`SIDEBOX_INBOX_DECLARE: must be true or false, got "yes please"`}},
		{"log", map[string]string{"SIDEBOX_LOG_LEVEL": "loud", "SIDEBOX_LOG_FORMAT": "xml"}, Log,
			[]string{`SIDEBOX_LOG_LEVEL: must be debug, info, warn or error, got "loud"`, `SIDEBOX_LOG_FORMAT: must be json or console, got "xml"`}},
		{"batch bytes", map[string]string{"SIDEBOX_BATCH_BYTES": "512"}, Relay,
			[]string{`SIDEBOX_BATCH_BYTES: must be between 1024 and 1073741824, got 512`}},
		{"http addr", map[string]string{"SIDEBOX_HTTP_ADDR": "9719"}, Server,
			[]string{`SIDEBOX_HTTP_ADDR: must be host:port or :port, got "9719"`}},
		{"components' problems all at once, each variable once", map[string]string{
			"SIDEBOX_OUTBOX_TABLE": "Bad", "SIDEBOX_INBOX_QUEUE": "q",
			"SIDEBOX_BATCH_SIZE": "0", "SIDEBOX_RELAY_WORKERS": "0", "SIDEBOX_INBOX_WORKERS": "0", "SIDEBOX_INBOX_RETENTION": "1s",
		}, Outbox | Relay | Consumer, []string{
			`SIDEBOX_OUTBOX_TABLE: "Bad" is not a lower-case SQL identifier`,
			`SIDEBOX_BATCH_SIZE: must be between 1 and 10000, got 0`,
			`SIDEBOX_RELAY_WORKERS: must be between 1 and 64, got 0`,
			`SIDEBOX_INBOX_WORKERS: must be between 1 and 16, got 0`,
			`SIDEBOX_INBOX_RETENTION: must be at least 1m0s, got 1s`,
		}},
		{"no comparison with a value that did not parse", map[string]string{"SIDEBOX_RETRY_BACKOFF": "soon", "SIDEBOX_RETRY_BACKOFF_MAX": "50ms"}, Relay,
			[]string{`SIDEBOX_RETRY_BACKOFF: must be a duration`}},
		{"several at once, in variable order", map[string]string{
			"SIDEBOX_DATABASE_URL": "postgres://h/db", "SIDEBOX_AMQP_URL": "amqp://h/",
			"SIDEBOX_RELAY_WORKERS": "x", "SIDEBOX_BATCH_SIZE": "20000", "SIDEBOX_STATUS_INTERVAL": "0s",
		}, all &^ Consumer, []string{
			`SIDEBOX_STATUS_INTERVAL: must be a positive duration, got "0s"`,
			`SIDEBOX_BATCH_SIZE: must be between 1 and 10000, got 20000`,
			`SIDEBOX_RELAY_WORKERS: must be an integer, got "x"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			err := Load().Check(tt.groups)
			if err == nil {
				t.Fatal("no error")
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %T is not Errors", err)
			}
			var one *Error
			if !errors.As(err, &one) || one != es[0] {
				t.Errorf("errors.As does not find the first *Error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the password: %s", err)
			}
		})
	}
}

// A bad value of a variable a command does not use does not stop that command.
func TestOnlyCheckedGroups(t *testing.T) {
	setEnv(t, map[string]string{
		"SIDEBOX_DATABASE_URL": "dbname=app host=/run/postgresql",
		"SIDEBOX_BATCH_SIZE":   "many",
		"SIDEBOX_AMQP_URL":     "http://nope",
	})
	if err := Load().Check(Database | Outbox | Inbox); err != nil {
		t.Errorf("migrate's groups: %v", err)
	}
}

// envconfig reads an unprefixed variable when the prefixed one is unset, if given a
// prefix; sidebox must not pick up an application's DATABASE_URL.
func TestNoUnprefixedFallback(t *testing.T) {
	setEnv(t, map[string]string{"DATABASE_URL": "postgres://app/db", "BATCH_SIZE": "7"})
	c := Load()
	if c.DatabaseURL != "" || c.BatchSize != 500 {
		t.Errorf("read unprefixed variables: DatabaseURL %q, BatchSize %d", c.DatabaseURL, c.BatchSize)
	}
}

func TestUnknown(t *testing.T) {
	setEnv(t, map[string]string{
		"SIDEBOX_BATCHSIZE":             "7",
		"SIDEBOX_LOG_LEVEL":             "debug",
		"SIDEBOX_SERVICE_HOST":          "10.0.0.1", // Kubernetes service links
		"SIDEBOX_PORT_9719_TCP_ADDR":    "10.0.0.1",
		"SIDEBOX_INBOX_QUEUE_TYPO_HERE": "x",
	})
	got := strings.Join(Unknown(), ",")
	if got != "SIDEBOX_BATCHSIZE,SIDEBOX_INBOX_QUEUE_TYPO_HERE" {
		t.Errorf("Unknown() = %s", got)
	}
}

func TestVarsDocumented(t *testing.T) {
	// The README carries the same table as docs/configuration.md; both must match the code.
	for _, doc := range []string{"docs/configuration.md", "README.md"} {
		t.Run(doc, func(t *testing.T) {
			b, err := os.ReadFile("../../" + doc)
			if err != nil {
				t.Fatal(err)
			}
			rows := map[string][]string{}
			for line := range strings.SplitSeq(string(b), "\n") {
				cells := strings.Split(line, " | ")
				if len(cells) >= 3 && strings.HasPrefix(cells[0], "| `SIDEBOX_") {
					rows[strings.Trim(cells[0], "| `")] = cells
				}
			}
			for _, v := range Vars() {
				if v.Description == "" {
					t.Errorf("%s has no desc tag", v.Name)
				}
				cells, ok := rows[v.Name]
				switch {
				case !ok:
					t.Errorf("%s has no row for %s", doc, v.Name)
				case v.Default != "" && cells[1] != "`"+v.Default+"`":
					t.Errorf("%s gives %s the default %s, the code `%s`", doc, v.Name, cells[1], v.Default)
				}
				delete(rows, v.Name)
			}
			for name := range rows {
				t.Errorf("%s documents %s, which sidebox does not read", doc, name)
			}
		})
	}
}

// SIDEBOX_OUTBOX_TABLE and SIDEBOX_INBOX_TABLE take comma-separated lists; the first
// item is Outbox and Inbox.
func TestTableLists(t *testing.T) {
	setEnv(t, map[string]string{
		"SIDEBOX_DATABASE_URL": "postgres://h/db",
		"SIDEBOX_OUTBOX_TABLE": "a.outbox, b.outbox,outbox",
		"SIDEBOX_INBOX_TABLE":  "a.inbox,b.inbox",
	})
	c := Load()
	if err := c.Check(Database | Outbox | Inbox | Relay); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range c.Outboxes {
		got = append(got, tb.String())
	}
	if strings.Join(got, " ") != "a.outbox b.outbox outbox" || c.Outbox.String() != "a.outbox" {
		t.Errorf("Outboxes = %v, Outbox = %v", got, c.Outbox)
	}
	if len(c.Inboxes) != 2 || c.Inbox.String() != "a.inbox" || c.Inboxes[1].String() != "b.inbox" {
		t.Errorf("Inboxes = %v, Inbox = %v", c.Inboxes, c.Inbox)
	}
	if rc := c.RelayConfigFor(c.Outboxes[1], ""); rc.Table != "b.outbox" || rc.BatchSize != c.BatchSize {
		t.Errorf("RelayConfigFor = %+v", rc)
	}
}

// With partitions and no SIDEBOX_OUTBOX_RETENTION, the relay keeps three days.
func TestPartitionsDefaultRetention(t *testing.T) {
	setEnv(t, map[string]string{"SIDEBOX_OUTBOX_PARTITIONS": "Daily"})
	c := Load()
	if err := c.Check(Outbox | Relay); err != nil {
		t.Fatal(err)
	}
	if rc := c.RelayConfig(""); rc.Retention != 72*time.Hour || rc.Partitions != "Daily" {
		t.Errorf("relay config: Retention %v, Partitions %q; want 72h, Daily", rc.Retention, rc.Partitions)
	}
	setEnv(t, map[string]string{"SIDEBOX_OUTBOX_PARTITIONS": "daily", "SIDEBOX_OUTBOX_RETENTION": "24h"})
	if c := Load(); c.RelayConfig("").Retention != 24*time.Hour {
		t.Errorf("Retention %v, want the 24h set", c.RelayConfig("").Retention)
	}
	setEnv(t, nil)
	if c := Load(); c.RelayConfig("").Retention != 0 {
		t.Errorf("without partitions Retention %v, want 0", c.RelayConfig("").Retention)
	}
}
