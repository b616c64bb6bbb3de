package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// row is one claimed outbox row.
type row struct {
	id          string // canonical lower-case UUID text, as PostgreSQL prints it
	exchange    string
	routingKey  string
	payload     []byte
	messageType string
	contentType string
	headers     []byte // jsonb text
	orderingKey string
	keyed       bool
	createdAt   time.Time
	attempts    int
}

// maxShortStr is the longest AMQP short string: exchange, routing key, property strings
// and table keys. A longer one cannot be encoded, and an encoding error half-way
// through a publish would break the whole connection, so it is refused up front.
const maxShortStr = 255

// publishing maps a row onto an AMQP message. frameMax is the connection's negotiated
// frame size (0: unknown); the content header, which carries the headers table, must
// fit in one frame. An error means the row can never be published as it is.
func (rw *row) publishing(frameMax int) (amqp.Publishing, error) {
	for _, f := range []struct{ name, value string }{
		{"exchange", rw.exchange},
		{"routing_key", rw.routingKey},
		{"content_type", rw.contentType},
		{"message_type", rw.messageType},
	} {
		if len(f.value) > maxShortStr {
			return amqp.Publishing{}, fmt.Errorf("%s is %d bytes long; AMQP allows at most %d", f.name, len(f.value), maxShortStr)
		}
	}
	headers, size, err := mapHeaders(rw.headers)
	if err != nil {
		return amqp.Publishing{}, fmt.Errorf("headers: %w", err)
	}
	// Content header frame: frame envelope 8, class/weight/size/flags 14, the
	// properties we set (short strings with their length byte, timestamp 8,
	// delivery mode 1) and the headers table with its 4-byte length.
	header := 8 + 14 + 1 + len(rw.contentType) + 1 + len(rw.messageType) + 1 + len(rw.id) + 8 + 1 + 4 + size
	if frameMax > 0 && header > frameMax {
		return amqp.Publishing{}, fmt.Errorf("headers take %d bytes encoded; the broker's frame size is %d", header, frameMax)
	}
	return amqp.Publishing{
		Headers:      headers,
		ContentType:  rw.contentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    rw.id,
		Timestamp:    rw.createdAt,
		Type:         rw.messageType,
		Body:         rw.payload,
	}, nil
}

// mapHeaders converts a row's jsonb headers object into an AMQP table and returns its
// encoded size. The mapping:
//   - strings, booleans: as they are;
//   - numbers written as integers: int64, or an error beyond the 64-bit range;
//   - other numbers (fraction or exponent): float64;
//   - objects: nested tables; arrays: field arrays;
//   - null: left out of tables; inside arrays kept as AMQP void, so that the other
//     elements keep their positions.
//
// An empty object gives a nil table (no headers property).
func mapHeaders(raw []byte) (amqp.Table, int, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, 0, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, 0, fmt.Errorf("not valid JSON: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, 0, errors.New("not a JSON object")
	}
	t, size, err := mapTable(obj, "")
	if err != nil {
		return nil, 0, err
	}
	if len(t) == 0 {
		return nil, 0, nil
	}
	return t, size, nil
}

// mapTable returns the table and the size of its encoded fields (without the table's
// own length prefix).
func mapTable(obj map[string]any, path string) (amqp.Table, int, error) {
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
		if len(k) > maxShortStr {
			return nil, 0, fmt.Errorf("key %.40q... is %d bytes long; AMQP allows at most %d", k, len(k), maxShortStr)
		}
		f, n, err := mapField(v, p)
		if err != nil {
			return nil, 0, err
		}
		t[k] = f
		size += 1 + len(k) + n
	}
	return t, size, nil
}

// mapField returns an AMQP field value and its encoded size including the type byte.
func mapField(v any, path string) (any, int, error) {
	switch v := v.(type) {
	case nil:
		return nil, 1, nil
	case string:
		return v, 1 + 4 + len(v), nil
	case bool:
		return v, 1 + 1, nil
	case json.Number:
		n, err := mapNumber(string(v))
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", path, err)
		}
		return n, 1 + 8, nil
	case map[string]any:
		t, n, err := mapTable(v, path)
		if err != nil {
			return nil, 0, err
		}
		return t, 1 + 4 + n, nil
	case []any:
		arr := make([]any, len(v))
		size := 1 + 4
		for i, e := range v {
			f, n, err := mapField(e, path+"["+strconv.Itoa(i)+"]")
			if err != nil {
				return nil, 0, err
			}
			arr[i] = f
			size += n
		}
		return arr, size, nil
	}
	return nil, 0, fmt.Errorf("%s: unsupported JSON value %T", path, v)
}

// mapNumber maps a JSON number literal: integer syntax to int64, anything else to
// float64.
func mapNumber(s string) (any, error) {
	if !strings.ContainsAny(s, ".eE") {
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("integer %s does not fit in 64 bits", s)
		}
		return i, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number %s does not fit in a 64-bit float", s)
	}
	return f, nil
}
