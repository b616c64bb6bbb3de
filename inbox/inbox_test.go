package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/testenv"
)

func TestMigrationsNameEveryObjectAfterTheTable(t *testing.T) {
	ms := migrations(t)
	created := regexp.MustCompile(`(?i)CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+)?(?:TABLE|INDEX|SEQUENCE|FUNCTION|TRIGGER|CONSTRAINT TRIGGER)\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\w+)|CONSTRAINT\s+(\w+)`)
	for _, s := range ms.Steps {
		for _, m := range created.FindAllStringSubmatch(s.Up, -1) {
			name := m[1] + m[2]
			if !strings.HasPrefix(name, "inbox") {
				t.Errorf("migration %d creates %q, not named after the table", s.Version, name)
			}
		}
	}
}

func TestMigrationsUpDownOnCustomTable(t *testing.T) {
	t.Parallel()
	db, _ := testenv.DB(t)
	ctx := context.Background()
	tbl := pg.MustParseTable("app.orders_inbox")
	if _, err := migrations(t).Up(ctx, db, tbl); err != nil {
		t.Fatal(err)
	}
	var names string
	if err := db.QueryRow(`SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'app' AND relname <> 'sidebox_migrations' AND relname NOT LIKE 'sidebox_migrations%'`).Scan(&names); err != nil {
		t.Fatal(err)
	}
	for _, n := range strings.Split(names, ",") {
		if !strings.HasPrefix(n, "orders_inbox") {
			t.Errorf("object %q is not named after the table", n)
		}
	}
	if again, err := migrations(t).Up(ctx, db, tbl); err != nil || len(again) != 0 {
		t.Errorf("second Up applied %v, %v", again, err)
	}
	if _, err := migrations(t).Down(ctx, db, tbl); err != nil {
		t.Fatal(err)
	}
	if ok, err := pg.TableExists(ctx, db, tbl); err != nil || ok {
		t.Errorf("table exists after Down: %v %v", ok, err)
	}
}

func TestParseBindings(t *testing.T) {
	got, err := ParseBindings(" orders:order.* ,billing:invoice.#,fan:, ns:odd:key")
	if err != nil {
		t.Fatal(err)
	}
	want := []Binding{{"orders", "order.*"}, {"billing", "invoice.#"}, {"fan", ""}, {"ns", "odd:key"}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("binding %d = %v, want %v", i, got[i], want[i])
		}
	}
	if b, err := ParseBindings("  "); b != nil || err != nil {
		t.Errorf("blank = %v, %v", b, err)
	}
	for _, bad := range []string{"orders", ":key", "a:b,,c:d", "a:b,"} {
		if _, err := ParseBindings(bad); err == nil {
			t.Errorf("ParseBindings(%q) accepted", bad)
		}
	}
}

func TestConsumerConfig(t *testing.T) {
	c := ConsumerConfig{Queue: "orders"}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Consumer != "orders" || c.Table != "inbox" || c.Prefetch != 512 || c.BatchSize != 128 || c.BatchWait != 5*time.Millisecond {
		t.Errorf("defaults %+v", c)
	}
	// No wait at all is refused, as SIDEBOX_INBOX_BATCH_WAIT=0 is; zero means the
	// default only before SetDefaults.
	noWait := c
	noWait.BatchWait = 0
	var ce *ConfigError
	if err := noWait.Validate(); !errors.As(err, &ce) || ce.Field != "BatchWait" {
		t.Errorf("BatchWait 0: Validate = %v", err)
	}
	small := ConsumerConfig{Queue: "q", Prefetch: 10}
	small.SetDefaults()
	if small.BatchSize != 10 {
		t.Errorf("batch size default with prefetch 10 = %d, want 10", small.BatchSize)
	}
	for field, cfg := range map[string]ConsumerConfig{
		"Queue":      {},
		"Prefetch":   {Queue: "q", Prefetch: 70000},
		"BatchSize":  {Queue: "q", Prefetch: 5, BatchSize: 6},
		"BatchWait":  {Queue: "q", BatchWait: -time.Second},
		"Bindings":   {Queue: "q", Bindings: []Binding{{"", "k"}}},
		"Table":      {Queue: "q", Table: "Inbox"},
		"AMQPURLs":   {Queue: "q", AMQPURLs: []string{"amqp://"}},
		"BackoffMax": {Queue: "q", Backoff: time.Minute, BackoffMax: time.Second},
		"Consumer":   {Queue: "q", Consumer: strings.Repeat("c", 1001)}, // SIDEBOX_INBOX_CONSUMER's bound
	} {
		cfg.SetDefaults()
		var ce *ConfigError
		if err := cfg.Validate(); !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: Validate = %v", field, err)
		}
	}
}

func TestProcessorConfig(t *testing.T) {
	for field, cfg := range map[string]ProcessorConfig{
		"Consumer":        {},
		"BatchSize":       {Consumer: "c", BatchSize: 65},
		"MaxAttempts":     {Consumer: "c", MaxAttempts: -1},
		"RetryBackoffMax": {Consumer: "c", RetryBackoff: time.Minute, RetryBackoffMax: time.Second},
		"Table":           {Consumer: "c", Table: "a.b.c"},
	} {
		cfg.SetDefaults()
		var ce *ConfigError
		if err := cfg.Validate(); !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: Validate = %v", field, err)
		}
	}
}

func TestHeadersJSON(t *testing.T) {
	ts := time.Date(2024, 5, 1, 14, 0, 0, 0, time.FixedZone("CEST", 2*3600))
	b, err := HeadersJSON(amqp.Table{
		"str": "x", "bool": false, "i8": int8(-8), "u8": uint8(8), "i16": int16(-16), "u16": uint16(16),
		"i32": int32(-32), "u32": uint32(32), "i64": int64(math.MaxInt64), "f32": float32(0.1), "f64": 0.1,
		"nan": math.NaN(), "inf": math.Inf(-1), "dec": amqp.Decimal{Scale: 3, Value: -5}, "time": ts,
		"bytes": []byte{0, 255}, "void": nil, "table": amqp.Table{"k\x00": "\xffv"}, "array": []any{int32(1), "two", nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"array":[1,"two",null],"bool":false,"bytes":"AP8=","dec":-0.005,"f32":0.1,"f64":0.1,"i16":-16,"i32":-32,` +
		`"i64":9223372036854775807,"i8":-8,"inf":"-Infinity","nan":"NaN","str":"x","table":{"k\ufffd":"\ufffdv"},` +
		`"time":"2024-05-01T12:00:00Z","u16":16,"u32":32,"u8":8,"void":null}`
	want = strings.ReplaceAll(want, `\ufffd`, "\uFFFD")
	if string(b) != want {
		t.Errorf("HeadersJSON =\n%s\nwant\n%s", b, want)
	}
	if !json.Valid(b) {
		t.Error("not valid JSON")
	}
	if b, _ := HeadersJSON(nil); string(b) != "{}" {
		t.Errorf("no headers = %s", b)
	}
	if _, err := HeadersJSON(amqp.Table{"ch": make(chan int)}); err == nil {
		t.Error("an unsupported type was accepted")
	}
}

// migrations loads the embedded migrations as the CLI does.
func migrations(t *testing.T) pg.Migrations {
	t.Helper()
	ms, err := pg.LoadMigrations(MigrationFiles(), ".", DefaultTable)
	if err != nil || ms.Base != "inbox" || len(ms.Steps) == 0 {
		t.Fatalf("embedded migrations: %v (%d steps)", err, len(ms.Steps))
	}
	return ms
}
