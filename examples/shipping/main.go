// Command shipping is the example shipping service: it creates one shipment per
// order.created event, exactly once.
//
// By default it processes what the sidecar, `sidebox inbox`, stored in its inbox table
// (an inbox.Processor). With SHIPPING_MODE=direct it consumes the queue itself and
// deduplicates with inbox.Claim; run no sidecar inbox consumer then.
//
// Environment:
//
//	SHIPPING_DATABASE_URL  the service's database, with the inbox table (required)
//	SHIPPING_CONSUMER      inbox consumer name (default shipping.orders: the sidecar's
//	                       SIDEBOX_INBOX_CONSUMER, which defaults to its queue name)
//	SHIPPING_MODE          sidecar (default) or direct
//	SHIPPING_AMQP_URL      RabbitMQ, direct mode only
//	SHIPPING_QUEUE         queue to consume, direct mode only (default shipping.orders)
//
// Set up the database with `sidebox migrate up` first; the service creates its own
// shipments table.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/lib/pq"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/examples/shipping/shipping"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "shipping:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("SHIPPING_DATABASE_URL")
	if url == "" {
		return errors.New("SHIPPING_DATABASE_URL is not set")
	}
	consumer := envOr("SHIPPING_CONSUMER", "shipping.orders")
	db, err := sql.Open("postgres", url)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	if err := shipping.Migrate(ctx, db); err != nil {
		return err
	}
	go report(ctx, db)

	switch mode := envOr("SHIPPING_MODE", "sidecar"); mode {
	case "sidecar":
		log, err := zap.NewProduction()
		if err != nil {
			return fmt.Errorf("logger: %w", err)
		}
		defer func() { _ = log.Sync() }()
		p, err := shipping.NewProcessor(db, consumer, log)
		if err != nil {
			return err
		}
		fmt.Printf("shipping: processing the inbox rows of consumer %q\n", consumer)
		return p.Run(ctx)
	case "direct":
		return consume(ctx, db, consumer)
	default:
		return fmt.Errorf("SHIPPING_MODE: want sidecar or direct, got %q", mode)
	}
}

// consume is direct mode: the service reads the queue itself, and ShipDelivery claims
// each message ID in the shipment's transaction before the delivery is acknowledged.
func consume(ctx context.Context, db *sql.DB, consumer string) error {
	url := os.Getenv("SHIPPING_AMQP_URL")
	if url == "" {
		return errors.New("SHIPPING_AMQP_URL is not set (direct mode)")
	}
	queue := envOr("SHIPPING_QUEUE", "shipping.orders")
	conn, err := amqp.Dial(url)
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Qos(64, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.ConsumeWithContext(ctx, queue, consumer, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", queue, err)
	}
	fmt.Printf("shipping: consuming %s directly as %q\n", queue, consumer)
	for d := range deliveries {
		if err := shipping.ShipDelivery(ctx, db, consumer, d); err != nil {
			if ctx.Err() != nil {
				break // shutting down; unacknowledged deliveries are redelivered
			}
			fmt.Fprintln(os.Stderr, "shipping:", err)
			_ = d.Nack(false, true)
			continue
		}
		if err := d.Ack(false); err != nil {
			return fmt.Errorf("acknowledge: %w", err)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("RabbitMQ closed the delivery channel")
}

// report prints the number of shipments once a second while it changes.
func report(ctx context.Context, db *sql.DB) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := -1
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := shipping.Count(ctx, db); err == nil && n != last {
			fmt.Printf("shipping: %d shipments\n", n)
			last = n
		}
	}
}

func envOr(name, def string) string {
	if s := os.Getenv(name); s != "" {
		return s
	}
	return def
}
