package orders_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sidebox/sidebox/examples/orders/orders"
	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

func setup(t *testing.T) (*sql.DB, *orders.Service) {
	t.Helper()
	db, _ := testenv.DB(t)
	if err := outbox.Migrate(t.Context(), db, "outbox"); err != nil {
		t.Fatal(err)
	}
	if err := orders.Migrate(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	svc, err := orders.NewService(db, "outbox", "orders")
	if err != nil {
		t.Fatal(err)
	}
	return db, svc
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func approve(context.Context, int64) error { return nil }

func TestPlaceWritesOrderAndEventTogether(t *testing.T) {
	db, svc := setup(t)
	id, err := svc.Place(t.Context(), "customer-7", 1234, approve)
	if err != nil {
		t.Fatal(err)
	}

	var exchange, key, typ, orderingKey string
	var payload []byte
	if err := db.QueryRowContext(t.Context(),
		`SELECT exchange, routing_key, message_type, ordering_key, payload FROM outbox`,
	).Scan(&exchange, &key, &typ, &orderingKey, &payload); err != nil {
		t.Fatal(err)
	}
	if exchange != "orders" || key != orders.RoutingKey || typ != orders.EventType || orderingKey != "customer-7" {
		t.Errorf("outbox row: exchange %q, routing key %q, type %q, ordering key %q", exchange, key, typ, orderingKey)
	}
	var ev orders.Created
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	if want := (orders.Created{OrderID: id, CustomerID: "customer-7", TotalCents: 1234}); ev != want {
		t.Errorf("event %+v, want %+v", ev, want)
	}
	if n := count(t, db, "orders"); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

func TestDeclinedPaymentRollsTheEventBack(t *testing.T) {
	db, svc := setup(t)
	id, err := svc.Place(t.Context(), "customer-7", 1234, func(context.Context, int64) error {
		return orders.ErrPaymentDeclined
	})
	if !errors.Is(err, orders.ErrPaymentDeclined) || id == 0 {
		t.Fatalf("Place = %d, %v; want the order's id and ErrPaymentDeclined", id, err)
	}
	if n, m := count(t, db, "orders"), count(t, db, "outbox"); n != 0 || m != 0 {
		t.Errorf("%d orders and %d outbox rows after a rollback, want none", n, m)
	}
}

func TestPlaceMany(t *testing.T) {
	db, svc := setup(t)
	seen := map[int64]bool{}
	res, err := svc.PlaceMany(t.Context(), orders.Load{Count: 60, DeclineRate: 0.5}, func(id int64, committed bool) {
		seen[id] = committed
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Committed+res.RolledBack != 60 || len(seen) != 60 {
		t.Errorf("%d committed + %d rolled back, %d observed; want 60 in all", res.Committed, res.RolledBack, len(seen))
	}
	if n, m := count(t, db, "orders"), count(t, db, "outbox"); n != res.Committed || m != res.Committed {
		t.Errorf("%d orders and %d outbox rows, want %d of each", n, m, res.Committed)
	}
	for id, committed := range seen {
		var exists bool
		if err := db.QueryRowContext(t.Context(), `SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)`, id).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists != committed {
			t.Errorf("order %d: committed %t, in the table %t", id, committed, exists)
		}
	}
}

func TestPlaceManyStopsOnCancel(t *testing.T) {
	_, svc := setup(t)
	ctx, cancel := context.WithCancel(t.Context())
	n := 0
	res, err := svc.PlaceMany(ctx, orders.Load{Count: 1_000_000, Rate: 1000}, func(int64, bool) {
		if n++; n == 10 {
			cancel()
		}
	})
	if err != nil {
		t.Fatalf("PlaceMany after cancel: %v", err)
	}
	if res.Committed < 10 || res.Committed > 1000 {
		t.Errorf("%d orders committed; want about 10", res.Committed)
	}
}
