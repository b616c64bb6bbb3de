package relay

import (
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/pg"
)

func TestMapHeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want amqp.Table
		err  string
	}{
		{name: "empty object", json: `{}`, want: nil},
		{name: "only nulls", json: `{"a": null}`, want: nil},
		{name: "scalars", json: `{"s": "x", "t": true, "f": false, "i": -42, "max": 9223372036854775807, "min": -9223372036854775808, "d": 1.5, "e": 1e3, "z": 0.0}`,
			want: amqp.Table{"s": "x", "t": true, "f": false, "i": int64(-42), "max": int64(9223372036854775807), "min": int64(-9223372036854775808), "d": 1.5, "e": 1000.0, "z": 0.0}},
		{name: "nested and arrays", json: `{"o": {"a": 1, "n": null, "p": {"q": "r"}}, "arr": [1, "two", null, {"k": null, "v": 2.5}, [true]]}`,
			want: amqp.Table{"o": amqp.Table{"a": int64(1), "p": amqp.Table{"q": "r"}}, "arr": []any{int64(1), "two", nil, amqp.Table{"v": 2.5}, []any{true}}}},
		{name: "integer beyond int64", json: `{"a": {"b": [1, 18446744073709551616]}}`, err: "a.b[1]: integer 18446744073709551616 does not fit in 64 bits"},
		{name: "float beyond float64", json: `{"f": 1e400}`, err: "f: number 1e400 does not fit in a 64-bit float"},
		{name: "key too long", json: `{"` + strings.Repeat("k", 256) + `": 1}`, err: "256 bytes long"},
		{name: "not an object", json: `[1]`, err: "not a JSON object"},
		{name: "not JSON", json: `{`, err: "not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, size, err := mapHeaders([]byte(tc.json))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %#v\nwant %#v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("amqp rejects the table: %v", err)
			}
			if got != nil && size <= 0 {
				t.Errorf("size = %d", size)
			}
		})
	}
}

func TestPublishingRefusesWhatAMQPCannotCarry(t *testing.T) {
	base := row{id: "0d6f2c1e-1b7a-4c39-9a53-4c0e0b6c3a11", exchange: "x", routingKey: "k", payload: []byte("p"),
		contentType: "application/json", headers: []byte(`{}`), createdAt: time.Unix(1700000000, 0)}
	msg, err := base.publishing(131072)
	if err != nil {
		t.Fatal(err)
	}
	if msg.MessageId != base.id || msg.DeliveryMode != amqp.Persistent || msg.Timestamp.Unix() != 1700000000 || msg.Headers != nil {
		t.Errorf("publishing = %+v", msg)
	}

	long := base
	long.routingKey = strings.Repeat("r", 256)
	if _, err := long.publishing(131072); err == nil || !strings.Contains(err.Error(), "routing_key") {
		t.Errorf("256-byte routing key: error = %v", err)
	}
	long = base
	long.messageType = strings.Repeat("t", 256)
	if _, err := long.publishing(131072); err == nil || !strings.Contains(err.Error(), "message_type") {
		t.Errorf("256-byte message type: error = %v", err)
	}
	big := base
	big.headers = []byte(`{"h": "` + strings.Repeat("x", 5000) + `"}`)
	if _, err := big.publishing(4096); err == nil || !strings.Contains(err.Error(), "frame size") {
		t.Errorf("headers larger than a frame: error = %v", err)
	}
	if _, err := big.publishing(131072); err != nil {
		t.Errorf("headers within a frame: %v", err)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	c := Config{Table: pg.MustParseTable("outbox")}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	want := Config{Table: c.Table, BatchSize: 500, PollInterval: time.Second, RetryBackoff: time.Second,
		RetryBackoffMax: 5 * time.Minute, PublishTimeout: 30 * time.Second, MaxAttempts: 10, Workers: 2, BatchBytes: 8 << 20}
	if c != want {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
	for _, tc := range []struct {
		change func(*Config)
		err    string
	}{
		{func(c *Config) { c.Table = pg.Table{} }, "Table"},
		{func(c *Config) { c.BatchSize = 10001 }, "BatchSize"},
		{func(c *Config) { c.BatchSize = -1 }, "BatchSize"},
		{func(c *Config) { c.PollInterval = -time.Second }, "PollInterval"},
		{func(c *Config) { c.RetryBackoffMax = time.Millisecond }, "RetryBackoffMax"},
		{func(c *Config) { c.PublishTimeout = -1 }, "PublishTimeout"},
		{func(c *Config) { c.MaxAttempts = -1 }, "MaxAttempts"},
		{func(c *Config) { c.Workers = 65 }, "Workers"},
		{func(c *Config) { c.BatchBytes = 1000 }, "BatchBytes"},
	} {
		c := want
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Validate() = %v, want an error about %s", err, tc.err)
		}
	}
	if _, err := New(nil, "", nil, Config{}, nil, nil); err == nil {
		t.Error("New accepted a config without a table")
	}
}

func TestTruncateKeepsValidText(t *testing.T) {
	if got := truncate("a\x00b", 10); got != "ab" {
		t.Errorf("truncate with NUL = %q", got)
	}
	got := truncate(strings.Repeat("é", 10), 5) // cuts a two-byte rune in half
	if got != "éé..." {
		t.Errorf("truncate = %q", got)
	}
}
