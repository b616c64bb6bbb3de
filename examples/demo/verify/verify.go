// Package verify holds the check the demo ends with, and the end-to-end test asserts:
// every committed order has exactly one shipment, and no shipment exists for an order
// that was not committed.
package verify

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
)

// Report compares the orders in the orders service's database with the shipments in
// the shipping service's.
type Report struct {
	Orders     int     // committed orders
	Shipments  int     // shipment rows
	Missing    []int64 // committed orders without a shipment (not delivered yet, or lost)
	Duplicated []int64 // orders with more than one shipment: a duplicate applied twice
	Phantom    []int64 // shipments of orders that never committed: a rolled-back event escaped
}

// OK reports whether orders and shipments match one to one.
func (r Report) OK() bool {
	return r.Orders == r.Shipments && len(r.Missing) == 0 && len(r.Duplicated) == 0 && len(r.Phantom) == 0
}

func (r Report) String() string {
	return fmt.Sprintf("%d orders, %d shipments: %d missing, %d duplicated, %d phantom",
		r.Orders, r.Shipments, len(r.Missing), len(r.Duplicated), len(r.Phantom))
}

// Compare reads both tables and compares them.
func Compare(ctx context.Context, ordersDB, shippingDB *sql.DB) (Report, error) {
	orders, err := ids(ctx, ordersDB, `SELECT id FROM orders`)
	if err != nil {
		return Report{}, fmt.Errorf("read orders: %w", err)
	}
	shipped, err := ids(ctx, shippingDB, `SELECT order_id FROM shipments`)
	if err != nil {
		return Report{}, fmt.Errorf("read shipments: %w", err)
	}

	r := Report{Orders: len(orders), Shipments: len(shipped)}
	perOrder := make(map[int64]int, len(shipped))
	for _, id := range shipped {
		perOrder[id]++
	}
	committed := make(map[int64]bool, len(orders))
	for _, id := range orders {
		committed[id] = true
		switch n := perOrder[id]; {
		case n == 0:
			r.Missing = append(r.Missing, id)
		case n > 1:
			r.Duplicated = append(r.Duplicated, id)
		}
	}
	for id := range perOrder {
		if !committed[id] {
			r.Phantom = append(r.Phantom, id)
		}
	}
	slices.Sort(r.Missing)
	slices.Sort(r.Duplicated)
	slices.Sort(r.Phantom)
	return r, nil
}

func ids(ctx context.Context, db *sql.DB, query string) ([]int64, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
