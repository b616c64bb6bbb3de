package amqpmap

import (
	"reflect"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestHeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want amqp.Table
		err  string
	}{
		{name: "empty object", json: `{}`, want: nil},
		{name: "only nulls", json: `{"a": null}`, want: nil},
		{name: "scalars", json: `{"s": "x", "t": true, "f": false, "i": -42, "max": 9223372036854775807, "min": -9223372036854775808, "d": 1.5, "e": 1e3, "z": 0.0}`,
			want: amqp.Table{"s": "x", "t": true, "f": false, "i": int64(-42), "max": int64(9223372036854775807), "min": int64(-9223372036854775808), "d": 1.5, "e": int64(1000), "z": 0.0}},
		{name: "kind by decimal scale, as jsonb keeps it", json: `{"a": 1.50e1, "b": -1.5e1, "c": 1e-3, "d": 0e5, "e": 9.223372036854775807e18, "f": -9.223372036854775808e18, "g": 1000000000000000000000.0, "h": 0.0}`,
			want: amqp.Table{"a": 15.0, "b": int64(-15), "c": 0.001, "d": int64(0), "e": int64(9223372036854775807), "f": int64(-9223372036854775808), "g": 1e21, "h": 0.0}},
		{name: "whole number beyond int64 in exponent form", json: `{"x": 1e21}`, err: `header "x": integer 1e21 does not fit in 64 bits`},
		{name: "huge exponent", json: `{"x": 1e99999999999}`, err: `header "x": number 1e99999999999 does not fit in a 64-bit float`},
		{name: "nested and arrays", json: `{"o": {"a": 1, "n": null, "p": {"q": "r"}}, "arr": [1, "two", null, {"k": null, "v": 2.5}, [true]]}`,
			want: amqp.Table{"o": amqp.Table{"a": int64(1), "p": amqp.Table{"q": "r"}}, "arr": []any{int64(1), "two", nil, amqp.Table{"v": 2.5}, []any{true}}}},
		{name: "the relay's own headers are left out", json: `{"x-ordering-key": "k", "x-outbox-seq": "forged", "h": 1, "o": {"x-outbox-seq": 2}}`,
			want: amqp.Table{"h": int64(1), "o": amqp.Table{"x-outbox-seq": int64(2)}}},
		{name: "integer beyond int64", json: `{"a": {"b": [1, 18446744073709551616]}}`, err: `header "a.b[1]": integer 18446744073709551616 does not fit in 64 bits`},
		{name: "integer below int64", json: `{"lo": -9223372036854775809}`, err: `header "lo": integer -9223372036854775809 does not fit in 64 bits`},
		{name: "long literal shortened", json: `{"h": 1` + strings.Repeat("0", 100) + `}`, err: `header "h": integer 10000000000000000000... (101 characters) does not fit in 64 bits`},
		{name: "float beyond float64", json: `{"f": 1` + strings.Repeat("0", 400) + `.0}`, err: `header "f": number 10000000000000000000... (403 characters) does not fit in a 64-bit float`},
		{name: "name too long", json: `{"` + strings.Repeat("k", 256) + `": 1}`, err: `header "kkkkkkkk`},
		{name: "nested name too long", json: `{"o": {"` + strings.Repeat("k", 256) + `": 1}}`, err: `header "o.kkkkkk`},
		{name: "not an object", json: `[1]`, err: "not a JSON object"},
		{name: "not JSON", json: `{`, err: "not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, size, err := Headers([]byte(tc.json))
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

// The size Headers reports is the encoded size of the table's fields, so that the
// relay's frame-size check is exact.
func TestHeadersSizeIsTheEncodedSize(t *testing.T) {
	raw := `{"s": "text", "i": 7, "f": 0.5, "b": true, "o": {"a": [1, null, "x"]}}`
	tbl, size, err := Headers([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	tbl["x-outbox-seq"] = int64(1)
	tbl["x-ordering-key"] = "key"
	size += IntSize("x-outbox-seq") + StringSize("x-ordering-key", 3)
	if want := encodedFields(t, tbl); size != want {
		t.Errorf("size = %d, encoded = %d", size, want)
	}
}

// encodedFields computes a table's field bytes from the AMQP 0-9-1 grammar (name as a
// short string, a type byte, the value), independently of Headers: the client does not
// expose its encoder.
func encodedFields(t *testing.T, tbl amqp.Table) int {
	t.Helper()
	var n int
	for k, v := range tbl {
		n += 1 + len(k) + valueSize(t, v)
	}
	return n
}

func valueSize(t *testing.T, v any) int {
	switch v := v.(type) {
	case nil:
		return 1
	case bool:
		return 2
	case int64, float64:
		return 9
	case string:
		return 5 + len(v)
	case amqp.Table:
		return 5 + encodedFields(t, v)
	case []any:
		n := 5
		for _, e := range v {
			n += valueSize(t, e)
		}
		return n
	}
	t.Fatalf("unexpected value %T", v)
	return 0
}

func TestShortString(t *testing.T) {
	if err := ShortString("exchange", strings.Repeat("e", 255)); err != nil {
		t.Errorf("255 bytes: %v", err)
	}
	if err := ShortString("exchange", strings.Repeat("e", 256)); err == nil || err.Error() != "exchange is 256 bytes long; AMQP allows at most 255" {
		t.Errorf("256 bytes: %v", err)
	}
}
