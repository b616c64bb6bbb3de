package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/inject"
	"github.com/sidebox/sidebox/relay"
)

// Check and the components' own Validate accept the same values: a variable's bound
// and its component's are one bound. Each value is tried through the environment, and
// the mapped configuration through the component.
func TestBoundsAgreeWithComponents(t *testing.T) {
	base := map[string]string{
		"SIDEBOX_DATABASE_URL": "postgres://h/db",
		"SIDEBOX_AMQP_URL":     "amqp://h/",
		"SIDEBOX_INBOX_QUEUE":  "q",
	}
	all := Database | Broker | Outbox | Inbox | Server | Log | Relay | Consumer
	for _, tt := range []struct {
		name   string
		values []string
	}{
		{"SIDEBOX_BATCH_SIZE", []string{"0", "1", "10000", "10001"}},
		{"SIDEBOX_MAX_ATTEMPTS", []string{"0", "1", "1000000", "1000001"}},
		{"SIDEBOX_RELAY_WORKERS", []string{"0", "1", "64", "65"}},
		{"SIDEBOX_BATCH_BYTES", []string{"1023", "1024", "1073741824", "1073741825"}},
		{"SIDEBOX_MAX_MESSAGE_BYTES", []string{"1023", "1024", "536870912", "536870913"}},
		{"SIDEBOX_POLL_INTERVAL", []string{"-1s", "1ms"}},
		{"SIDEBOX_PUBLISH_TIMEOUT", []string{"-1s", "1ms"}},
		{"SIDEBOX_RETRY_BACKOFF", []string{"-1s", "1ms"}},
		{"SIDEBOX_INBOX_PREFETCH", []string{"0", "128", "65535", "65536"}}, // below 128, SIDEBOX_INBOX_BATCH_SIZE is over it
		{"SIDEBOX_INBOX_BATCH_SIZE", []string{"0", "1", "512", "513"}},
		{"SIDEBOX_INBOX_WORKERS", []string{"0", "1", "16", "17"}},
		{"SIDEBOX_INBOX_BATCH_WAIT", []string{"-1ms", "0s", "1ms", "10s", "11s"}},
		{"SIDEBOX_INBOX_BATCH_BYTES", []string{"0", "1", "268435456", "268435457"}},
		{"SIDEBOX_INBOX_PREFETCH_BYTES", []string{"0", "1"}},
		{"SIDEBOX_INBOX_RETENTION", []string{"59s", "1m"}},
		{"SIDEBOX_INBOX_CONSUMER", []string{strings.Repeat("c", 1000), strings.Repeat("c", 1001)}},
		{"SIDEBOX_INBOX_QUEUE", []string{strings.Repeat("q", 255), strings.Repeat("q", 256)}},
	} {
		for _, v := range tt.values {
			t.Run(tt.name+"="+v[:min(len(v), 12)], func(t *testing.T) {
				env := map[string]string{tt.name: v}
				for k, bv := range base {
					if k != tt.name {
						env[k] = bv
					}
				}
				setEnv(t, env)
				c := Load()
				checked := c.Check(all)
				// The components see what Check filled in, whatever it thought of it, and
				// their defaults for the fields no variable sets.
				var dc inbox.ConsumerConfig
				dc.SetDefaults()
				cc := c.ConsumerConfig()
				cc.ConnectionName, cc.OrderingHeader, cc.Backoff, cc.BackoffMax = dc.ConnectionName, dc.OrderingHeader, dc.Backoff, dc.BackoffMax
				var dp inbox.PurgerConfig
				dp.SetDefaults()
				pc := c.PurgerConfig()
				pc.BatchSize, pc.Interval = dp.BatchSize, dp.Interval
				components := errors.Join(c.RelayConfig("").Validate(), cc.Validate(), pc.Validate())
				if (checked == nil) != (components == nil) {
					t.Errorf("Check: %v\ncomponents: %v", checked, components)
				}
				if checked != nil && !strings.HasPrefix(checked.Error(), tt.name+": ") {
					t.Errorf("Check names another variable: %v", checked)
				}
				if components != nil {
					if named := FromComponent(components); !strings.HasPrefix(named.Error(), tt.name+": ") {
						t.Errorf("FromComponent(%v) = %v, want it to name %s", components, named, tt.name)
					}
				}
			})
		}
	}
}

// With no variable but the required ones, the components get their own defaults.
func TestDefaultsAreTheComponents(t *testing.T) {
	setEnv(t, map[string]string{"SIDEBOX_DATABASE_URL": "postgres://h/db", "SIDEBOX_AMQP_URL": "amqp://h/", "SIDEBOX_INBOX_QUEUE": "q"})
	c := Load()
	if err := c.Check(Database | Broker | Outbox | Inbox | Server | Log | Relay | Consumer); err != nil {
		t.Fatal(err)
	}
	mapped := c.ConsumerConfig()
	filled := mapped
	filled.SetDefaults()
	filled.DrainTimeout = mapped.DrainTimeout // SIDEBOX_SHUTDOWN_TIMEOUT, not the library's default
	filled.ConnectionName, filled.OrderingHeader, filled.Backoff, filled.BackoffMax = "", "", 0, 0
	if fmt.Sprint(filled) != fmt.Sprint(mapped) {
		t.Errorf("consumer: mapped %+v, the component's defaults %+v", mapped, filled)
	}
	r := c.RelayConfig("")
	if r.BatchSize != relay.DefaultBatchSize || r.MaxAttempts != relay.DefaultMaxAttempts || r.Workers != relay.DefaultWorkers ||
		r.BatchBytes != relay.DefaultBatchBytes || r.RetryBackoffMax != relay.DefaultRetryBackoffMax || r.Table != "outbox" || r.Prepare != "auto" {
		t.Errorf("relay: mapped %+v", r)
	}
	if p := c.PurgerConfig(); p.Retention != inbox.DefaultRetention || p.Table != inbox.DefaultTable {
		t.Errorf("purger: mapped %+v", p)
	}
	if i := c.InjectConfig(); i.Mode != inject.ModeNative || i.Addr != ":8443" {
		t.Errorf("inject: mapped %+v", i)
	}
}

func TestFromComponent(t *testing.T) {
	if FromComponent(nil) != nil {
		t.Error("nil is not nil")
	}
	plain := errors.New("listen: address in use")
	if FromComponent(plain) != plain {
		t.Error("a plain error was changed")
	}
	mixed := errors.Join(&relay.ConfigError{Field: "Workers", Problem: "x"}, plain)
	if FromComponent(mixed) != mixed {
		t.Error("an error with a plain part was changed")
	}
	unknown := &inbox.ConfigError{Field: "OrderingHeader", Problem: "x"}
	if FromComponent(unknown) != unknown {
		t.Error("a field no variable sets was given a variable")
	}
	got := FromComponent(errors.Join(
		&relay.ConfigError{Field: "MaxAttempts", Problem: "must be between 1 and 1000000, got 0"},
		&inbox.ConfigError{Field: "BatchWait", Problem: "must be positive and at most 10s, got 0s"},
		fmt.Errorf("webhook: %w", &inject.ConfigError{Var: "SIDEBOX_INJECT_MODE", Problem: "must be native or classic"}),
	))
	var es Errors
	if !errors.As(got, &es) || len(es) != 3 {
		t.Fatalf("FromComponent = %#v", got)
	}
	for i, want := range []string{"SIDEBOX_MAX_ATTEMPTS", "SIDEBOX_INBOX_BATCH_WAIT", "SIDEBOX_INJECT_MODE"} {
		if es[i].Var != want {
			t.Errorf("error %d names %s, want %s", i, es[i].Var, want)
		}
	}
}

// The webhook's variables are checked by the webhook's own Validate, every problem at
// once.
func TestInjectChecked(t *testing.T) {
	setEnv(t, map[string]string{"SIDEBOX_INJECT_ADDR": "8443", "SIDEBOX_INJECT_MODE": "hybrid"})
	err := Load().Check(Inject)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Check = %v", err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Var)
	}
	if got := strings.Join(names, ","); got != "SIDEBOX_INJECT_ADDR,SIDEBOX_INJECT_TLS_CERT,SIDEBOX_INJECT_TLS_KEY,SIDEBOX_INJECT_IMAGE,SIDEBOX_INJECT_MODE" {
		t.Errorf("Check names %s", got)
	}
}

// The help text shows the bounds Check applies, taken from the components.
func TestHelpShowsLimits(t *testing.T) {
	want := map[string]string{
		"SIDEBOX_BATCH_SIZE":        "(1-10000)",
		"SIDEBOX_MAX_ATTEMPTS":      "(1-1000000)",
		"SIDEBOX_BATCH_BYTES":       "(1024-1073741824)",
		"SIDEBOX_INBOX_BATCH_WAIT":  "(at most 10s)",
		"SIDEBOX_INBOX_RETENTION":   "(at least 1m)",
		"SIDEBOX_INBOX_BATCH_BYTES": "(1 to 268435456)",
	}
	for _, v := range Vars() {
		if strings.ContainsAny(v.Description, "{}") {
			t.Errorf("%s: unfilled help text %q", v.Name, v.Description)
		}
		if w, ok := want[v.Name]; ok && !strings.Contains(v.Description, w) {
			t.Errorf("%s: help text %q lacks %s", v.Name, v.Description, w)
		}
	}
}
