package relay

import (
	"database/sql"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
)

func TestPublishingRefusesWhatAMQPCannotCarry(t *testing.T) {
	base := row{id: "0d6f2c1e-1b7a-4c39-9a53-4c0e0b6c3a11", exchange: "x", routingKey: "k", payload: []byte("p"),
		contentType: "application/json", headers: []byte(`{}`), createdAt: time.Unix(1700000000, 0)}
	msg, err := base.publishing(131072)
	if err != nil {
		t.Fatal(err)
	}
	if msg.MessageId != base.id || msg.DeliveryMode != amqp.Persistent || msg.Timestamp.Unix() != 1700000000 {
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

// The relay stamps x-outbox-seq on every message and x-ordering-key on keyed ones,
// replacing row headers of those names, and counts their bytes against the frame.
func TestPublishingStampsOrderingHeaders(t *testing.T) {
	base := row{id: "0d6f2c1e-1b7a-4c39-9a53-4c0e0b6c3a11", exchange: "x", routingKey: "k", payload: []byte("p"),
		contentType: "application/json", createdAt: time.Unix(1700000000, 0), seq: 1 << 40}
	for _, tc := range []struct {
		name    string
		headers string
		key     *string
		want    amqp.Table
	}{
		{name: "no headers, no key", headers: `{}`, want: amqp.Table{"x-outbox-seq": int64(1 << 40)}},
		{name: "no key: a row's x-ordering-key is dropped", headers: `{"a": "b", "x-ordering-key": "forged", "x-outbox-seq": "forged"}`,
			want: amqp.Table{"a": "b", "x-outbox-seq": int64(1 << 40)}},
		{name: "key replaces the row's", headers: `{"x-ordering-key": 7, "x-outbox-seq": 1, "a": "b"}`, key: ptr("order-42"),
			want: amqp.Table{"a": "b", "x-ordering-key": "order-42", "x-outbox-seq": int64(1 << 40)}},
		{name: "empty key is a key", headers: `{}`, key: ptr(""),
			want: amqp.Table{"x-ordering-key": "", "x-outbox-seq": int64(1 << 40)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := base
			rw.headers = []byte(tc.headers)
			if tc.key != nil {
				rw.orderingKey, rw.keyed = *tc.key, true
			}
			msg, err := rw.publishing(131072)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(msg.Headers, tc.want) {
				t.Errorf("headers = %#v\nwant      %#v", msg.Headers, tc.want)
			}
			if err := msg.Headers.Validate(); err != nil {
				t.Errorf("amqp rejects the table: %v", err)
			}
		})
	}

	// A header frame that fits only without the stamped headers is refused: a key of
	// n bytes costs 1+14+1+4+n, the sequence 1+12+1+8.
	rw := base
	rw.headers = []byte(`{}`)
	unkeyed := 8 + 14 + 1 + len(rw.contentType) + 1 + 1 + len(rw.id) + 8 + 1 + 4 + 22
	rw.orderingKey, rw.keyed = strings.Repeat("k", 1000), true
	frame := unkeyed + 20 + 1000
	if _, err := rw.publishing(frame); err != nil {
		t.Errorf("header frame of exactly %d bytes: %v", frame, err)
	}
	if _, err := rw.publishing(frame - 1); err == nil || !strings.Contains(err.Error(), "frame size") {
		t.Errorf("header frame one byte over: error = %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestConfigDefaultsAndValidation(t *testing.T) {
	var c Config
	c.setDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	want := Config{Table: "outbox", ConnectionName: "sidebox relay", BatchSize: 500, PollInterval: time.Second, RetryBackoff: time.Second,
		RetryBackoffMax: 5 * time.Minute, PublishTimeout: 30 * time.Second, MaxAttempts: 10, Workers: 2, Prepare: "auto", BatchBytes: 8 << 20, MaxMessageBytes: 128 << 20, Partitions: "none"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
	for _, tc := range []struct {
		change func(*Config)
		err    string
	}{
		{func(c *Config) { c.Table = "" }, "Table"},
		{func(c *Config) { c.Table = "App.Outbox" }, "Table"},
		{func(c *Config) { c.Table = "a.b.c" }, "Table"},
		{func(c *Config) { c.AMQPURLs = []string{"http://u:secret@h/"} }, "AMQPURLs"},
		{func(c *Config) { c.BatchSize = 10001 }, "BatchSize"},
		{func(c *Config) { c.BatchSize = -1 }, "BatchSize"},
		{func(c *Config) { c.PollInterval = -time.Second }, "PollInterval"},
		{func(c *Config) { c.RetryBackoffMax = time.Millisecond }, "RetryBackoffMax"},
		{func(c *Config) { c.PublishTimeout = -1 }, "PublishTimeout"},
		{func(c *Config) { c.MaxAttempts = -1 }, "MaxAttempts"},
		{func(c *Config) { c.MaxAttempts = 1000001 }, "MaxAttempts"}, // SIDEBOX_MAX_ATTEMPTS's bound
		{func(c *Config) { c.Workers = 65 }, "Workers"},
		{func(c *Config) { c.Prepare = "sometimes" }, "Prepare"},
		{func(c *Config) { c.BatchBytes = 1000 }, "BatchBytes"},
		{func(c *Config) { c.MaxMessageBytes = 512<<20 + 1 }, "MaxMessageBytes"},
		{func(c *Config) { c.Partitions = "weekly" }, "Partitions"},
		{func(c *Config) { c.Partitions = "daily" }, "Retention"}, // 0: only New fills in the default
	} {
		c := want
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Validate() = %v, want an error about %s, without the password", err, tc.err)
		}
	}
	p := Config{Partitions: "Daily"}
	p.setDefaults()
	if p.Partitions != "daily" || p.Retention != DefaultPartitionedRetention {
		t.Errorf("defaults with Partitions Daily: %s, Retention %v; want daily, %v", p.Partitions, p.Retention, DefaultPartitionedRetention)
	}
	db, err := sql.Open("postgres", "postgres://127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := New(nil, Config{AMQPURLs: []string{"amqp://h/"}}); err == nil {
		t.Error("New accepted no database")
	}
	if _, err := New(db, Config{}); err == nil || !strings.Contains(err.Error(), "AMQPURLs or WithConnection") {
		t.Errorf("New without a broker: err = %v", err)
	}
	if _, err := New(db, Config{AMQPURLs: []string{"amqp://h/"}}, WithConnection(broker.New([]string{"amqp://h/"}, broker.Config{}, zap.NewNop(), nil))); err == nil {
		t.Error("New accepted both AMQPURLs and WithConnection")
	}
}
