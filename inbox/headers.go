package inbox

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/pg"
)

// HeadersJSON maps an AMQP header table onto the JSON object stored in the inbox's
// headers column (jsonb):
//
//	string, table, array, boolean       → string, object, array, boolean
//	signed and unsigned integers         → number (exact: jsonb numbers are numeric)
//	float32, float64                     → number; NaN and ±Infinity → "NaN", "Infinity", "-Infinity"
//	decimal (scale, value)               → number, e.g. 12.34 (exact)
//	timestamp                            → string, RFC 3339 in UTC ("2024-05-01T12:00:00Z")
//	byte array                           → string, standard base64 with padding
//	void (no value)                      → null
//
// jsonb cannot hold the character U+0000 nor invalid UTF-8: both are replaced with
// U+FFFD in keys and strings. The result is always a JSON object ("{}" for no headers).
func HeadersJSON(t amqp.Table) ([]byte, error) {
	if len(t) == 0 {
		return []byte("{}"), nil
	}
	v, err := jsonValue(t)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode headers: %w", err)
	}
	return b, nil
}

func jsonValue(v any) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case bool:
		return x, nil
	case string:
		return pg.Text(x), nil
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64:
		return x, nil
	case float32:
		return floatValue(float64(x), 32), nil
	case float64:
		return floatValue(x, 64), nil
	case amqp.Decimal:
		return decimalValue(x), nil
	case time.Time:
		return x.UTC().Format(time.RFC3339), nil
	case []byte:
		return base64.StdEncoding.EncodeToString(x), nil
	case amqp.Table:
		out := make(map[string]any, len(x))
		for k, e := range x {
			j, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("header %q: %w", k, err)
			}
			out[pg.Text(k)] = j
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			j, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("array element %d: %w", i, err)
			}
			out[i] = j
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unsupported AMQP field type %T", v)
	}
}

func floatValue(f float64, bits int) any {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	// Shortest representation that round-trips at the original precision.
	return json.Number(strconv.FormatFloat(f, 'g', -1, bits))
}

func decimalValue(d amqp.Decimal) json.Number {
	r := new(big.Rat).SetFrac(big.NewInt(int64(d.Value)), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(d.Scale)), nil))
	return json.Number(r.FloatString(int(d.Scale)))
}
