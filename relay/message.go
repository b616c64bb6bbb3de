package relay

import (
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/amqpmap"
)

// row is one claimed outbox row.
type row struct {
	id          string // canonical lower-case UUID text, as PostgreSQL prints it
	tid         string // the claimed row version's ctid, for settling it (outboxdb.Settle)
	exchange    string
	routingKey  string
	payload     []byte // nil until read when size > outboxdb.InlinePayload (see worker.payloads)
	size        int    // payload bytes
	messageType string
	contentType string
	headers     []byte // jsonb text
	orderingKey string
	keyed       bool
	seq         int64
	createdAt   time.Time
	attempts    int
}

// publishing maps a row onto an AMQP message. frameMax is the connection's negotiated
// frame size (0: unknown); the content header, which carries the headers table, must
// fit in one frame. An error means the row can never be published as it is: a string
// too long for AMQP would break the whole connection half-way through a publish, so it
// is refused up front.
func (rw *row) publishing(frameMax int) (amqp.Publishing, error) {
	for _, f := range []struct{ name, value string }{
		{"exchange", rw.exchange},
		{"routing_key", rw.routingKey},
		{"content_type", rw.contentType},
		{"message_type", rw.messageType},
	} {
		if err := amqpmap.ShortString(f.name, f.value); err != nil {
			return amqp.Publishing{}, err
		}
	}
	headers, size, err := amqpmap.Headers(rw.headers)
	if err != nil {
		return amqp.Publishing{}, err
	}
	// The relay's own headers replace the row's of the same name (which Headers
	// left out).
	if headers == nil {
		headers = amqp.Table{}
	}
	headers[amqpmap.SeqHeader] = rw.seq
	size += amqpmap.IntSize(amqpmap.SeqHeader)
	if rw.keyed {
		headers[amqpmap.OrderingKeyHeader] = rw.orderingKey
		size += amqpmap.StringSize(amqpmap.OrderingKeyHeader, len(rw.orderingKey))
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
