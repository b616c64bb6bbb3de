// Package orders is the producing half of the sidebox example: an order service that
// writes each order and its order.created event in one database transaction. The event
// is an outbox row; the sidebox relay publishes it to RabbitMQ once the transaction has
// committed, and never when it rolls back.
package orders

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sidebox/sidebox/outbox"
)

// Schema is the service's own table. The outbox table next to it is created by
// `sidebox migrate up` (or by your migration tool from outbox/migrations).
const Schema = `CREATE TABLE IF NOT EXISTS orders (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text        NOT NULL,
    total_cents bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)`

// Migrate creates the orders table if it does not exist.
func Migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, Schema); err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	return nil
}

// Names of the event on the wire.
const (
	EventType  = "order.created" // AMQP type
	RoutingKey = "order.created"
)

// Created is the body of an order.created event.
type Created struct {
	OrderID    int64  `json:"order_id"`
	CustomerID string `json:"customer_id"`
	TotalCents int64  `json:"total_cents"`
}

// Service places orders.
type Service struct {
	db       *sql.DB
	outbox   *outbox.Writer
	exchange string
}

// NewService returns a Service that writes its events to outboxTable ("outbox" unless
// you renamed it) for publication on exchange.
func NewService(db *sql.DB, outboxTable, exchange string) (*Service, error) {
	w, err := outbox.NewWriter(outboxTable)
	if err != nil {
		return nil, err
	}
	return &Service{db: db, outbox: w, exchange: exchange}, nil
}

// ErrPaymentDeclined is what the example's payment check fails with.
var ErrPaymentDeclined = errors.New("payment declined")

// Place writes an order and its order.created event in one transaction and returns the
// order's ID.
//
// charge runs last, inside the transaction, after the event has been written: when it
// fails, the transaction rolls back and takes the event with it, so no one ever hears
// of the order. The ID is returned in that case too (with the error), to show which
// order never happened.
func (s *Service) Place(ctx context.Context, customerID string, totalCents int64, charge func(ctx context.Context, orderID int64) error) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit

	var id int64
	if err := tx.QueryRowContext(ctx,
		`INSERT INTO orders (customer_id, total_cents) VALUES ($1, $2) RETURNING id`,
		customerID, totalCents).Scan(&id); err != nil {
		return 0, fmt.Errorf("insert order: %w", err)
	}

	body, err := json.Marshal(Created{OrderID: id, CustomerID: customerID, TotalCents: totalCents})
	if err != nil {
		return id, fmt.Errorf("encode order %d event: %w", id, err)
	}
	if _, err := s.outbox.Write(ctx, tx, outbox.Message{
		Exchange:    s.exchange,
		RoutingKey:  RoutingKey,
		Type:        EventType,
		OrderingKey: customerID, // one customer's events are published in order
		Payload:     body,
	}); err != nil {
		return id, fmt.Errorf("order %d: %w", id, err)
	}

	if err := charge(ctx, id); err != nil {
		return id, fmt.Errorf("order %d: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return id, fmt.Errorf("commit order %d: %w", id, err)
	}
	return id, nil
}

// Load describes a stream of orders for PlaceMany.
type Load struct {
	Count       int     // orders to attempt
	Rate        int     // orders per second at most; 0 = as fast as possible
	Workers     int     // concurrent transactions; default 4
	Customers   int     // distinct customers, i.e. ordering keys; default 50
	DeclineRate float64 // fraction of payments declined, each rolling its order back
}

// Result counts the orders PlaceMany placed.
type Result struct {
	Committed  int
	RolledBack int // their events were written, then rolled back: never published
}

// PlaceMany places load.Count orders at load.Rate, declining a random load.DeclineRate
// of the payments. It stops early, without error, when ctx is cancelled, and on the
// first error other than a declined payment. observe, when not nil, is called after
// every order with its ID and whether it committed, one call at a time; it must be
// quick.
func (s *Service) PlaceMany(ctx context.Context, load Load, observe func(orderID int64, committed bool)) (Result, error) {
	if load.Workers <= 0 {
		load.Workers = 4
	}
	if load.Customers <= 0 {
		load.Customers = 50
	}
	charge := func(context.Context, int64) error {
		if rand.Float64() < load.DeclineRate {
			return ErrPaymentDeclined
		}
		return nil
	}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu     sync.Mutex
		res    Result
		failed error
	)
	place := func() {
		customer := fmt.Sprintf("customer-%d", 1+rand.IntN(load.Customers))
		id, err := s.Place(ctx, customer, 500+rand.Int64N(20000), charge)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			res.Committed++
		case errors.Is(err, ErrPaymentDeclined):
			res.RolledBack++
		case ctx.Err() != nil:
			return // stopping; the transaction rolled back, as if never attempted
		default:
			failed = err
			stop()
			return
		}
		if observe != nil {
			observe(id, err == nil)
		}
	}

	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range load.Workers {
		wg.Go(func() {
			for range jobs {
				place()
			}
		})
	}
	var tick <-chan time.Time
	if load.Rate > 0 && load.Rate <= int(time.Second) {
		t := time.NewTicker(time.Second / time.Duration(load.Rate))
		defer t.Stop()
		tick = t.C
	}
feed:
	for range load.Count {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				break feed
			}
		}
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()

	return res, failed
}
