// Command orders is the example order service: it places orders, each one an order row
// and an order.created outbox row written in one transaction. The sidebox relay, running
// next to it, publishes the events.
//
// A tenth of the payments are declined after the event was written; those transactions
// roll back, and their events are never published.
//
// Environment:
//
//	ORDERS_DATABASE_URL   the service's database, with the outbox table (required)
//	ORDERS_COUNT          orders to place (default 1000)
//	ORDERS_RATE           orders per second at most (default 200; 0 = no limit)
//	ORDERS_DECLINE_RATE   fraction of payments declined (default 0.1)
//	ORDERS_EXCHANGE       exchange the events are published to (default orders)
//	ORDERS_OUTBOX_TABLE   outbox table (default outbox)
//
// Set up the database with `sidebox migrate up` first; the service creates its own
// orders table.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	_ "github.com/lib/pq"

	"github.com/sidebox/sidebox/examples/orders/orders"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("ORDERS_DATABASE_URL")
	if url == "" {
		return fmt.Errorf("ORDERS_DATABASE_URL is not set")
	}
	load := orders.Load{Count: 1000, Rate: 200, DeclineRate: 0.1}
	if err := intEnv("ORDERS_COUNT", &load.Count); err != nil {
		return err
	}
	if err := intEnv("ORDERS_RATE", &load.Rate); err != nil {
		return err
	}
	if s := os.Getenv("ORDERS_DECLINE_RATE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 0 || f > 1 {
			return fmt.Errorf("ORDERS_DECLINE_RATE: want a fraction between 0 and 1, got %q", s)
		}
		load.DeclineRate = f
	}

	db, err := sql.Open("postgres", url)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	if err := orders.Migrate(ctx, db); err != nil {
		return err
	}
	svc, err := orders.NewService(db, envOr("ORDERS_OUTBOX_TABLE", "outbox"), envOr("ORDERS_EXCHANGE", "orders"))
	if err != nil {
		return err
	}

	fmt.Printf("orders: placing %d orders at up to %d/s, declining %.0f%% of the payments\n",
		load.Count, load.Rate, 100*load.DeclineRate)
	var committed, rolledBack int
	last := time.Now()
	res, err := svc.PlaceMany(ctx, load, func(_ int64, ok bool) {
		if ok {
			committed++
		} else {
			rolledBack++
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Printf("orders: %d committed, %d rolled back\n", committed, rolledBack)
		}
	})
	fmt.Printf("orders: done: %d committed, %d rolled back (their events were never published)\n",
		res.Committed, res.RolledBack)
	return err
}

func intEnv(name string, v *int) error {
	s := os.Getenv(name)
	if s == "" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%s: want a non-negative integer, got %q", name, s)
	}
	*v = n
	return nil
}

func envOr(name, def string) string {
	if s := os.Getenv(name); s != "" {
		return s
	}
	return def
}
