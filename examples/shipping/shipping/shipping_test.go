package shipping_test

import (
	"database/sql"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/examples/shipping/shipping"
	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/testenv"
)

func setup(t *testing.T) *sql.DB {
	t.Helper()
	db, _ := testenv.DB(t)
	if err := inbox.Migrate(t.Context(), db, "inbox"); err != nil {
		t.Fatal(err)
	}
	if err := shipping.Migrate(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	return db
}

// shipments returns the number of shipments per order.
func shipments(t *testing.T, db *sql.DB) map[int64]int {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT order_id, count(*) FROM shipments GROUP BY order_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// What sidebox inbox stores: one row per message ID, whatever the number of deliveries.
func store(t *testing.T, db *sql.DB, messageID, typ, payload string) {
	t.Helper()
	if _, err := db.ExecContext(t.Context(), `INSERT INTO inbox (consumer, message_id, message_type, payload)
VALUES ('shipping.orders', $1, $2, $3) ON CONFLICT DO NOTHING`, messageID, typ, []byte(payload)); err != nil {
		t.Fatal(err)
	}
}

func TestProcessorShipsEachOrderOnce(t *testing.T) {
	db := setup(t)
	store(t, db, "m1", "order.created", `{"order_id":1}`)
	store(t, db, "m2", "order.created", `{"order_id":2}`)
	store(t, db, "m1", "order.created", `{"order_id":1}`) // a duplicate delivery
	store(t, db, "m3", "order.cancelled", `{"order_id":1}`)

	p, err := shipping.NewProcessor(db, "shipping.orders", zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for {
		n, err := p.ProcessOnce(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if got := shipments(t, db); len(got) != 2 || got[1] != 1 || got[2] != 1 {
		t.Errorf("shipments per order %v, want one each for orders 1 and 2", got)
	}
	var unprocessed int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM inbox WHERE processed_at IS NULL`).Scan(&unprocessed); err != nil {
		t.Fatal(err)
	}
	if unprocessed != 0 {
		t.Errorf("%d inbox rows left unprocessed", unprocessed)
	}
}

func TestShipDeliveryIgnoresRedelivery(t *testing.T) {
	db := setup(t)
	d := amqp.Delivery{MessageId: "m1", Type: "order.created", Body: []byte(`{"order_id":42}`)}
	for range 3 {
		if err := shipping.ShipDelivery(t.Context(), db, "shipping.orders", d); err != nil {
			t.Fatal(err)
		}
		d.Redelivered = true
	}
	if got := shipments(t, db); len(got) != 1 || got[42] != 1 {
		t.Errorf("shipments per order %v, want one for order 42", got)
	}
}

func TestShipDeliveryBadPayloadClaimsNothing(t *testing.T) {
	db := setup(t)
	d := amqp.Delivery{MessageId: "m1", Type: "order.created", Body: []byte(`not json`)}
	if err := shipping.ShipDelivery(t.Context(), db, "shipping.orders", d); err == nil {
		t.Fatal("ShipDelivery accepted a payload that is not JSON")
	}
	var claimed int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM inbox`).Scan(&claimed); err != nil {
		t.Fatal(err)
	}
	if claimed != 0 {
		t.Errorf("a failed delivery left %d inbox rows; its claim must roll back with it", claimed)
	}
}
