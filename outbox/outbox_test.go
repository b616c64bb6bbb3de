package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sidebox/sidebox/internal/amqpmap"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

func migrated(t *testing.T, table string) *sql.DB {
	t.Helper()
	db, _ := testenv.Migrated(t, outbox.Migrate, table)
	return db
}

// A message written in a transaction exists if and only if the transaction commits.
func TestWriteIsPartOfTheCallersTransaction(t *testing.T) {
	t.Parallel()
	db := migrated(t, "outbox")
	ctx := context.Background()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	committed, err := outbox.Write(ctx, tx, outbox.Message{Exchange: "orders", RoutingKey: "order.created", Payload: []byte(`{"id":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := outbox.Write(ctx, tx, outbox.Message{Exchange: "orders", RoutingKey: "order.created", Payload: []byte(`{"id":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	// Visible inside its own transaction, gone after the rollback.
	var inside int
	if err := tx.QueryRow(`SELECT count(*) FROM outbox WHERE id = $1`, rolledBack).Scan(&inside); err != nil || inside != 1 {
		t.Fatalf("row inside its transaction: %d, %v", inside, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE id = $1`, committed); n != 1 {
		t.Errorf("committed message: %d rows, want 1", n)
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox WHERE id = $1`, rolledBack); n != 0 {
		t.Errorf("rolled-back message: %d rows, want 0", n)
	}
}

// Every field survives the round trip: binary payload byte for byte, headers as JSON,
// defaults for what was left out, the caller's own ID and delay.
func TestWriteRoundTrip(t *testing.T) {
	t.Parallel()
	db := migrated(t, "app.orders_outbox")
	w, err := outbox.NewWriter("app.orders_outbox")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	payload := []byte{0x00, 0xff, 0xfe, 'a', 0x00, 0x80} // not UTF-8, with NULs
	headers := map[string]any{"s": "x", "n": 42, "f": 1.5, "b": true, "o": map[string]any{"k": "v"}, "a": []any{1, "two"}}
	own := uuid.New()
	at := time.Now().Add(time.Hour).Truncate(time.Microsecond)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.Write(ctx, tx, outbox.Message{
		ID: own, Exchange: "orders", RoutingKey: "order.created", Payload: payload, Type: "OrderCreated",
		ContentType: "application/octet-stream", Headers: headers, OrderingKey: "order-7", AvailableAt: at,
	})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := w.Write(ctx, tx, outbox.Message{Exchange: "orders", Payload: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if id != own {
		t.Errorf("Write returned %s, want the caller's ID %s", id, own)
	}
	if plain == uuid.Nil {
		t.Error("Write returned no ID for a message without one")
	}

	var (
		gotPayload, gotHeaders []byte
		typ, key               sql.NullString
		contentType            string
		available              time.Time
		attempts               int
	)
	if err := db.QueryRow(`SELECT payload, headers::text, message_type, content_type, ordering_key, available_at, attempts
		FROM app.orders_outbox WHERE id = $1`, id).Scan(&gotPayload, &gotHeaders, &typ, &contentType, &key, &available, &attempts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotPayload, payload) {
		t.Errorf("payload = %x, want %x", gotPayload, payload)
	}
	var h map[string]any
	if err := json.Unmarshal(gotHeaders, &h); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"s": "x", "n": 42.0, "f": 1.5, "b": true, "o": map[string]any{"k": "v"}, "a": []any{1.0, "two"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("headers = %v, want %v", h, want)
	}
	if typ.String != "OrderCreated" || contentType != "application/octet-stream" || key.String != "order-7" || attempts != 0 {
		t.Errorf("type %q, content type %q, ordering key %q, attempts %d", typ.String, contentType, key.String, attempts)
	}
	if !available.Equal(at) {
		t.Errorf("available_at = %v, want %v", available, at)
	}

	// Defaults: no type, JSON content, empty headers, no key, due now.
	if err := db.QueryRow(`SELECT payload, headers::text, message_type, content_type, ordering_key
		FROM app.orders_outbox WHERE id = $1 AND available_at <= now() AND available_at = created_at`, plain).Scan(&gotPayload, &gotHeaders, &typ, &contentType, &key); err != nil {
		t.Fatalf("defaults of a plain message: %v", err)
	}
	if len(gotPayload) != 0 || string(gotHeaders) != "{}" || typ.Valid || contentType != "application/json" || key.Valid {
		t.Errorf("defaults: payload %x, headers %s, type %v, content type %q, key %v", gotPayload, gotHeaders, typ, contentType, key)
	}
}

func TestWriteRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := outbox.Write(ctx, nil, outbox.Message{Exchange: "x"}); !errors.Is(err, outbox.ErrNoPayload) {
		t.Errorf("Write without payload: %v, want ErrNoPayload", err)
	}
	if _, err := outbox.Write(ctx, nil, outbox.Message{Payload: []byte("x"), Headers: map[string]any{"c": make(chan int)}}); err == nil {
		t.Error("Write with unencodable headers succeeded")
	}
	for _, name := range []string{"Outbox", "a.b.c", "1outbox", "out-box", ""} {
		if _, err := outbox.NewWriter(name); err == nil {
			t.Errorf("NewWriter(%q) accepted an invalid table name", name)
		}
	}
}

// Write refuses what the relay could never publish, naming the header or field, and
// inserts nothing; what the relay can carry passes, up to the limits.
func TestWriteRefusesWhatTheRelayCannotPublish(t *testing.T) {
	t.Parallel()
	db := migrated(t, "outbox")
	ctx := context.Background()
	long := strings.Repeat("n", 256)
	for _, tc := range []struct {
		name string
		msg  outbox.Message
		err  string
	}{
		{"integer beyond int64", outbox.Message{Headers: map[string]any{"big": uint64(math.MaxUint64)}},
			`header "big": integer 18446744073709551615 does not fit in 64 bits`},
		{"nested integer beyond int64", outbox.Message{Headers: map[string]any{"o": map[string]any{"list": []any{1, uint64(1) << 63}}}},
			`header "o.list[1]": integer 9223372036854775808 does not fit in 64 bits`},
		{"header name over 255 bytes", outbox.Message{Headers: map[string]any{long: 1}},
			`header "nnnnnnnnnn`},
		{"nested header name over 255 bytes", outbox.Message{Headers: map[string]any{"o": map[string]any{long: "v"}}},
			"name is 256 bytes long; AMQP allows at most 255"},
		{"not finite", outbox.Message{Headers: map[string]any{"inf": math.Inf(1)}},
			`header "inf": +Inf is not a finite number`},
		{"nested NaN", outbox.Message{Headers: map[string]any{"o": map[string]any{"l": []any{1.5, math.NaN()}}}},
			`header "o.l[1]": NaN is not a finite number`},
		{"NaN in a typed map", outbox.Message{Headers: map[string]any{"m": map[string]float64{"x": math.NaN()}}},
			`header "m": json: unsupported value: NaN`},
		{"not encodable", outbox.Message{Headers: map[string]any{"c": make(chan int)}},
			`header "c": json: unsupported type: chan int`},
		{"exchange over 255 bytes", outbox.Message{Exchange: long}, "exchange is 256 bytes long"},
		{"routing key over 255 bytes", outbox.Message{RoutingKey: long}, "routing key is 256 bytes long"},
		{"type over 255 bytes", outbox.Message{Type: long}, "type is 256 bytes long"},
		{"content type over 255 bytes", outbox.Message{ContentType: long}, "content type is 256 bytes long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.msg.Payload = []byte("x")
			_, err := outbox.Write(ctx, db, tc.msg)
			if !errors.Is(err, outbox.ErrUnpublishable) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Write: %v, want ErrUnpublishable containing %q", err, tc.err)
			}
		})
	}
	if n := testenv.Count(t, db, `SELECT count(*) FROM outbox`); n != 0 {
		t.Errorf("%d rows inserted, want none", n)
	}

	// The limits themselves pass.
	edge := strings.Repeat("e", 255)
	if _, err := outbox.Write(ctx, db, outbox.Message{
		Exchange: edge, RoutingKey: edge, Type: edge, ContentType: edge, Payload: []byte("x"),
		Headers: map[string]any{edge: int64(math.MaxInt64), "min": int64(math.MinInt64), "u": uint64(math.MaxInt64), "f": math.MaxFloat64,
			"x-outbox-seq": "replaced by the relay", "n": nil},
	}); err != nil {
		t.Errorf("Write at the limits: %v", err)
	}
}

// Floats are stored with a decimal point, so that the relay publishes them as floats:
// jsonb would spell 1e21 without one, and Go spells 5.0 as 5.
func TestWriteKeepsFloatsFloats(t *testing.T) {
	t.Parallel()
	db := migrated(t, "outbox")
	id, err := outbox.Write(context.Background(), db, outbox.Message{Payload: []byte("x"),
		Headers: map[string]any{"w": 5.0, "big": 1e21, "f32": float32(0.5), "i": 5, "l": []any{2.0}}})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := db.QueryRow(`SELECT headers::text FROM outbox WHERE id = $1`, id).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := `{"i": 5, "l": [2.0], "w": 5.0, "big": 1000000000000000000000.0, "f32": 0.5}`; got != want {
		t.Errorf("stored headers %s, want %s", got, want)
	}
}

// The header names in the public API are the ones the relay stamps.
func TestHeaderNamesAreTheRelays(t *testing.T) {
	if outbox.OrderingKeyHeader != amqpmap.OrderingKeyHeader || outbox.SeqHeader != amqpmap.SeqHeader {
		t.Errorf("outbox headers %q, %q; the relay stamps %q, %q",
			outbox.OrderingKeyHeader, outbox.SeqHeader, amqpmap.OrderingKeyHeader, amqpmap.SeqHeader)
	}
}
