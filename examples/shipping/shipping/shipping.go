// Package shipping is the consuming half of the sidebox example: a shipping service
// that creates one shipment per order.created event, exactly once, although RabbitMQ
// delivers at least once.
//
// The usual set-up is the sidecar: `sidebox inbox` stores each delivery in the service's
// inbox table, deduplicated by message ID, and the service processes the stored rows with
// an inbox.Processor. The shipment and the row's processed mark commit in one
// transaction. NewProcessor and Ship are that path.
//
// A service that consumes RabbitMQ itself does the same with inbox.Claim in the
// transaction of its effect; ShipDelivery is that path.
package shipping

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/inbox"
)

// Schema is the service's own table. The inbox table next to it is created by
// `sidebox migrate up`.
//
// order_id is deliberately not unique: if a message were ever applied twice, the
// example must show it as a second shipment rather than hide it behind a constraint.
const Schema = `CREATE TABLE IF NOT EXISTS shipments (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   bigint      NOT NULL,
    message_id text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)`

// Migrate creates the shipments table if it does not exist.
func Migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, Schema); err != nil {
		return fmt.Errorf("create shipments table: %w", err)
	}
	return nil
}

// orderCreated is the part of the order service's event that shipping needs. It is
// declared here, not imported: services share a message format, not code.
type orderCreated struct {
	OrderID int64 `json:"order_id"`
}

// createShipment is the effect of one event, applied through the caller's transaction.
func createShipment(ctx context.Context, tx *sql.Tx, messageID string, payload []byte) error {
	var ev orderCreated
	if err := json.Unmarshal(payload, &ev); err != nil {
		return fmt.Errorf("decode order.created %s: %w", messageID, err)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO shipments (order_id, message_id) VALUES ($1, $2)`, ev.OrderID, messageID); err != nil {
		return fmt.Errorf("create shipment for order %d: %w", ev.OrderID, err)
	}
	return nil
}

// Ship is the inbox.Handler of the sidecar path. The Processor calls it in the
// transaction that marks the inbox row processed, once per stored message; an error
// rolls both back and the message is retried.
func Ship(ctx context.Context, tx *sql.Tx, msg inbox.Message) error {
	if msg.Type != "order.created" {
		return nil // not ours to handle; marked processed all the same
	}
	return createShipment(ctx, tx, msg.MessageID, msg.Payload)
}

// NewProcessor returns an inbox.Processor that ships the orders stored for consumer
// (the sidecar's SIDEBOX_INBOX_CONSUMER, which defaults to its queue name).
func NewProcessor(db *sql.DB, consumer string, log *zap.Logger) (*inbox.Processor, error) {
	return inbox.NewProcessor(db, inbox.ProcessorConfig{
		Consumer:     consumer,
		BatchSize:    64,
		PollInterval: 100 * time.Millisecond,
	}, Ship, inbox.WithLogger(log))
}

// ShipDelivery is the path without the sidecar, for a service that consumes RabbitMQ
// itself: inbox.Claim records the message ID in the same transaction as the shipment.
// A redelivered message finds its ID claimed and changes nothing. Acknowledge d after
// ShipDelivery returned nil; on an error, leave it to be redelivered.
func ShipDelivery(ctx context.Context, db *sql.DB, consumer string, d amqp.Delivery) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit

	first, err := inbox.Claim(ctx, tx, consumer, d.MessageId)
	if err != nil {
		return err
	}
	if !first {
		return nil // a duplicate: its shipment exists already
	}
	if d.Type == "order.created" {
		if err := createShipment(ctx, tx, d.MessageId, d.Body); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit shipment: %w", err)
	}
	return nil
}

// Count returns the number of shipments.
func Count(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM shipments`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count shipments: %w", err)
	}
	return n, nil
}
