// Package e2e_test runs the whole sidebox path with the real binary: the example order
// service writes orders and their events in one transaction, `sidebox relay` publishes
// them (and is SIGKILLed while it does), `sidebox inbox` stores the deliveries, and the
// example shipping service creates the shipments. Shipments must equal committed orders,
// exactly.
package e2e_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/examples/demo/verify"
	"github.com/sidebox/sidebox/examples/orders/orders"
	"github.com/sidebox/sidebox/examples/shipping/shipping"
	"github.com/sidebox/sidebox/internal/testenv"
)

// sideboxBin is the binary under test, built once by TestMain.
var sideboxBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sidebox-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if sideboxBin, err = testenv.BuildSidebox(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// The load: 1500 orders over about five seconds, the relay killed three times meanwhile.
const (
	orderCount  = 1500
	orderRate   = 300 // per second
	declineRate = 0.1
	relayKills  = 3
)

func TestOrdersToShipmentsWithRelayKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: about 15 s")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	ordersDB, ordersURL := testenv.DB(t)
	shippingDB, shippingURL := testenv.DB(t)
	amqpURL := testenv.AMQPURL(t)
	exchange, queue := testenv.Name(t, "e2e_orders"), testenv.Name(t, "e2e_shipping")

	// Each service's database: sidebox's tables, then the service's own.
	sidebox(t, ctx, []string{"SIDEBOX_DATABASE_URL=" + ordersURL}, "migrate", "up")
	sidebox(t, ctx, []string{"SIDEBOX_DATABASE_URL=" + shippingURL}, "migrate", "up")
	if err := orders.Migrate(ctx, ordersDB); err != nil {
		t.Fatal(err)
	}
	if err := shipping.Migrate(ctx, shippingDB); err != nil {
		t.Fatal(err)
	}

	// The exchange belongs to the order service; sidebox inbox declares and binds the queue.
	ch := amqpChannel(t, amqpURL)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, false, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange: %v", err)
	}
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = ch.ExchangeDelete(exchange, false, false)
	})

	inbox := startSidebox(t, "inbox", []string{
		"SIDEBOX_DATABASE_URL=" + shippingURL,
		"SIDEBOX_AMQP_URL=" + amqpURL,
		"SIDEBOX_INBOX_QUEUE=" + queue,
		"SIDEBOX_INBOX_BINDINGS=" + exchange + ":order.*",
	})
	inbox.waitReady(t, ctx)
	relayEnv := []string{"SIDEBOX_DATABASE_URL=" + ordersURL, "SIDEBOX_AMQP_URL=" + amqpURL}
	relay := startSidebox(t, "relay", relayEnv)
	relay.waitReady(t, ctx)

	// Shipping: the example's inbox processor, in this process.
	processor, err := shipping.NewProcessor(shippingDB, queue, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	procCtx, stopProc := context.WithCancel(ctx)
	procDone := make(chan error, 1)
	go func() { procDone <- processor.Run(procCtx) }()
	defer func() {
		stopProc()
		if err := <-procDone; err != nil {
			t.Errorf("shipping processor: %v", err)
		}
	}()

	// Orders: the example's order service, in this process.
	svc, err := orders.NewService(ordersDB, "outbox", exchange)
	if err != nil {
		t.Fatal(err)
	}
	var (
		committed, rolledBack []int64 // written by the producer, read once it is done
		attempted             atomic.Int64
	)
	producing := make(chan error, 1)
	go func() {
		_, err := svc.PlaceMany(ctx, orders.Load{Count: orderCount, Rate: orderRate, DeclineRate: declineRate},
			func(id int64, ok bool) {
				if ok {
					committed = append(committed, id)
				} else {
					rolledBack = append(rolledBack, id)
				}
				attempted.Add(1)
			})
		producing <- err
	}()

	// SIGKILL the relay when a quarter, half and three quarters of the orders are placed,
	// starting another each time: every kill lands while orders are placed, however fast
	// this machine is. What a killed relay had published but not yet deleted is
	// published again by the next one.
	for i := 1; i <= relayKills; i++ {
		mark := int64(orderCount * i / (relayKills + 1))
		waitFor(t, ctx, 30*time.Second, fmt.Sprintf("%d orders placed", mark), func() bool {
			return attempted.Load() >= mark
		})
		published := relay.counter("sidebox_outbox_published_total")
		relay.Kill(t)
		t.Logf("relay SIGKILLed after %d orders placed; it had published %d rows", attempted.Load(), published)
		relay = startSidebox(t, "relay", relayEnv)
	}
	if err := <-producing; err != nil {
		t.Fatalf("placing orders: %v", err)
	}
	if len(committed) == 0 || len(rolledBack) == 0 {
		t.Fatalf("placed %d orders and rolled back %d; want some of each", len(committed), len(rolledBack))
	}

	t.Logf("placed %d orders, rolled back %d", len(committed), len(rolledBack))

	// Everything committed goes through; then nothing is left anywhere, twice in a row.
	quiet := 0
	waitFor(t, ctx, 45*time.Second, "every order to be shipped", func() bool {
		if drained(t, ctx, ordersDB, shippingDB, ch, queue, inbox) {
			quiet++
		} else {
			quiet = 0
		}
		return quiet >= 2
	})

	rep, err := verify.Compare(ctx, ordersDB, shippingDB)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Orders != len(committed) {
		t.Errorf("%s; committed by the service: %d; missing %v, duplicated %v, phantom %v",
			rep, len(committed), head(rep.Missing), head(rep.Duplicated), head(rep.Phantom))
	}
	var escaped int
	if err := shippingDB.QueryRowContext(ctx, `SELECT count(*) FROM shipments WHERE order_id = ANY($1)`,
		pq.Array(rolledBack)).Scan(&escaped); err != nil {
		t.Fatal(err)
	}
	if escaped != 0 {
		t.Errorf("%d of %d rolled-back orders were shipped", escaped, len(rolledBack))
	}
	t.Logf("%s; %d orders rolled back; relay SIGKILLed %d times; inbox absorbed %d duplicate deliveries",
		rep, len(rolledBack), relayKills, inbox.counter("sidebox_inbox_duplicates_total"))

	// SIGTERM drains and exits 0.
	for _, p := range []*proc{relay, inbox} {
		if err := p.stop(); err != nil {
			t.Errorf("%v; log:\n%s", err, p.LogTail())
		}
	}
}

// drained reports whether every committed order has been published, stored, processed
// and shipped, with nothing in the queue and nothing in the inbox sidecar's hands.
func drained(t *testing.T, ctx context.Context, ordersDB, shippingDB *sql.DB, ch *amqp.Channel, queue string, inbox *proc) bool {
	t.Helper()
	var committed, outbox, unprocessed, shipped int
	if err := ordersDB.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox)`).Scan(&committed, &outbox); err != nil {
		t.Fatal(err)
	}
	if err := shippingDB.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM inbox WHERE processed_at IS NULL), (SELECT count(*) FROM shipments)`).Scan(&unprocessed, &shipped); err != nil {
		t.Fatal(err)
	}
	if outbox > 0 || unprocessed > 0 || shipped < committed {
		return false
	}
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	received := inbox.counter("sidebox_inbox_received_total")
	settled := inbox.counter("sidebox_inbox_stored_total") + inbox.counter("sidebox_inbox_duplicates_total") + inbox.counter("sidebox_inbox_rejected_total")
	return q.Messages == 0 && received == settled
}

// waitFor polls cond until it holds; the test fails when it does not within timeout.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// sidebox runs a short sidebox command and fails the test when it fails.
func sidebox(t *testing.T, ctx context.Context, env []string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, sideboxBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sidebox %v: %v\n%s", args, err, out)
	}
}

func amqpChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("connect to RabbitMQ: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// head returns at most the first 10 IDs, for messages.
func head(ids []int64) []int64 {
	return ids[:min(len(ids), 10)]
}
