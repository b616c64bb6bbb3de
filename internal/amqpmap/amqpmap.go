// Package amqpmap holds the one definition of what an outbox row may carry onto the
// AMQP wire: the relay maps rows with it, and outbox.Write refuses up front what it
// would refuse.
package amqpmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// MaxShortString is the longest AMQP short string: exchange, routing key, property
// strings and table keys. A longer one cannot be encoded.
const MaxShortString = 255

// The headers the relay stamps on every message. They replace row headers of the same
// name, which Headers therefore leaves out.
const (
	OrderingKeyHeader = "x-ordering-key" // the row's ordering_key; absent when null
	SeqHeader         = "x-outbox-seq"   // the row's seq, a 64-bit integer
)

// ShortString checks that value, the field called name, fits in an AMQP short string.
func ShortString(name, value string) error {
	if len(value) > MaxShortString {
		return fmt.Errorf("%s is %d bytes long; AMQP allows at most %d", name, len(value), MaxShortString)
	}
	return nil
}

// Headers converts a row's headers, a JSON object (jsonb text), into an AMQP table and
// returns the encoded size of its fields (without the table's 4-byte length). The
// mapping:
//   - strings, booleans: as they are;
//   - numbers without decimals (15, 1e3): int64, or an error beyond the 64-bit range;
//   - numbers with decimals (1.5, 15.0, 1e-3): float64, or an error beyond its range
//     (see number);
//   - objects: nested tables; arrays: field arrays;
//   - null: left out of tables; inside arrays kept as AMQP void, so that the other
//     elements keep their positions.
//
// Names longer than MaxShortString are refused. The top-level names OrderingKeyHeader
// and SeqHeader are left out: the relay stamps its own. An error names the header
// (a path such as a.b[1] inside nested values). An empty object gives a nil table.
func Headers(raw []byte) (amqp.Table, int, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "{}" { // most rows: no decoder
		return nil, 0, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, 0, fmt.Errorf("headers are not valid JSON: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, 0, errors.New("headers are not a JSON object")
	}
	delete(obj, OrderingKeyHeader)
	delete(obj, SeqHeader)
	t, size, err := table(obj, "")
	if err != nil {
		return nil, 0, err
	}
	if len(t) == 0 {
		return nil, 0, nil
	}
	return t, size, nil
}

// StringSize is the encoded size of a table field (name, type byte, value) holding a
// string of n bytes.
func StringSize(name string, n int) int { return 1 + len(name) + 1 + 4 + n }

// IntSize is the encoded size of a table field holding a 64-bit integer.
func IntSize(name string) int { return 1 + len(name) + 1 + 8 }

// table returns the table and the size of its encoded fields (without the table's own
// length prefix).
func table(obj map[string]any, path string) (amqp.Table, int, error) {
	t := make(amqp.Table, len(obj))
	size := 0
	for k, v := range obj {
		if v == nil {
			continue
		}
		p := path + "." + k
		if path == "" {
			p = k
		}
		if len(k) > MaxShortString {
			return nil, 0, fmt.Errorf("header %.60q...: the name is %d bytes long; AMQP allows at most %d", p, len(k), MaxShortString)
		}
		f, n, err := field(v, p)
		if err != nil {
			return nil, 0, err
		}
		t[k] = f
		size += 1 + len(k) + n
	}
	return t, size, nil
}

// field returns an AMQP field value and its encoded size including the type byte.
func field(v any, path string) (any, int, error) {
	switch v := v.(type) {
	case nil:
		return nil, 1, nil
	case string:
		return v, 1 + 4 + len(v), nil
	case bool:
		return v, 1 + 1, nil
	case json.Number:
		n, err := number(string(v))
		if err != nil {
			return nil, 0, fmt.Errorf("header %q: %w", path, err)
		}
		return n, 1 + 8, nil
	case map[string]any:
		t, n, err := table(v, path)
		if err != nil {
			return nil, 0, err
		}
		return t, 1 + 4 + n, nil
	case []any:
		arr := make([]any, len(v))
		size := 1 + 4
		for i, e := range v {
			f, n, err := field(e, path+"["+strconv.Itoa(i)+"]")
			if err != nil {
				return nil, 0, err
			}
			arr[i] = f
			size += n
		}
		return arr, size, nil
	}
	return nil, 0, fmt.Errorf("header %q: unsupported JSON value %T", path, v)
}

// number maps a JSON number literal by its decimal scale, the digits after the point
// once the exponent is applied: 0 (15, 1.5e1, 1e21) gives an int64, or an error beyond
// its range; more (1.5, 15.0, 1e-3) gives a float64. PostgreSQL's jsonb keeps a
// number's value and scale but not its spelling (1e21 becomes 1000000000000000000000,
// 1.50e1 becomes 15.0), so a literal maps the same before and after a round trip
// through the outbox table.
func number(s string) (any, error) {
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil // the common case: a plain integer
	}
	digits, scale, ok := decimal(s)
	if ok && scale <= 0 {
		// An integer: digits followed by -scale zeros.
		if digits == "" {
			return int64(0), nil
		}
		if len(digits)-scale <= 19 {
			lit := digits + strings.Repeat("0", -scale)
			if s[0] == '-' {
				lit = "-" + lit
			}
			if i, err := strconv.ParseInt(lit, 10, 64); err == nil {
				return i, nil
			}
		}
		return nil, fmt.Errorf("integer %s does not fit in 64 bits", shorten(s))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %s does not fit in a 64-bit float", shorten(s))
	}
	return f, nil
}

// decimal splits a JSON number literal into its significant digits (without leading
// zeros; "" for zero) and its decimal scale. ok is false when the exponent is out of
// any sensible range.
func decimal(s string) (digits string, scale int, ok bool) {
	s = strings.TrimPrefix(s, "-")
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || e > 1<<20 || e < -(1<<20) {
			return "", 0, false
		}
		mant, exp = s[:i], e
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	return strings.TrimLeft(intPart+frac, "0"), len(frac) - exp, true
}

// shorten keeps a number literal readable in an error: jsonb writes 1e999 out in full.
func shorten(s string) string {
	if len(s) <= 40 {
		return s
	}
	return fmt.Sprintf("%s... (%d characters)", s[:20], len(s))
}
