package embed_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/outbox"
	"github.com/sidebox/sidebox/relay"
)

// The servers of deploy/servers.sh, else the local ones on the standard ports.
const (
	envDatabaseURL = "SIDEBOX_TEST_DATABASE_URL"
	envAMQPURL     = "SIDEBOX_TEST_AMQP_URL"
)

const (
	outboxTable = "app.orders_outbox"
	inboxTable  = "app.orders_inbox"
	consumer    = "shipping"
)

// A service outside the sidebox module migrates its own outbox and inbox tables in
// schema app, writes an order and its message in one transaction, and runs a relay and
// an inbox consumer, processor and purger in-process on one metrics registry. The order
// is shipped exactly once: a rolled-back order never travels, and a redelivery of the
// committed one changes nothing.
func TestOutsideServiceRunsTheWholePathInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, dsn := freshDatabase(t, ctx)
	amqpURL := cmp.Or(os.Getenv(envAMQPURL), "amqp://guest:guest@127.0.0.1:5672/")

	// The tables, from code.
	for _, migrate := range []func() error{
		func() error { return outbox.Migrate(ctx, db, outboxTable) },
		func() error { return inbox.Migrate(ctx, db, inboxTable) },
		func() error { return outbox.Migrate(ctx, db, outboxTable) }, // again: nothing to do
	} {
		if err := migrate(); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(t, db, `CREATE TABLE app.orders (id bigint PRIMARY KEY, item text NOT NULL)`)
	// No key on shipments: a second effect of one order would show as a second row.
	mustExec(t, db, `CREATE TABLE app.shipments (order_id bigint NOT NULL, message_id text NOT NULL)`)

	exchange := "sidebox-embed-" + randomHex(6)
	queue := exchange + "-shipping"
	declareExchange(t, amqpURL, exchange, queue)

	// The writes: one order rolled back, one committed, each with its message.
	w, err := outbox.NewWriter(outboxTable)
	if err != nil {
		t.Fatal(err)
	}
	placeOrder := func(id int64, commit bool) {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.ExecContext(ctx, `INSERT INTO app.orders (id, item) VALUES ($1, 'book')`, id); err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]int64{"order_id": id})
		if _, err := w.Write(ctx, tx, outbox.Message{
			Exchange: exchange, RoutingKey: "order.created", Payload: body, Type: "order.created",
			OrderingKey: "customer-7",
		}); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	placeOrder(1, false)
	placeOrder(2, true)

	// The sidebox components, in-process.
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	reg := prometheus.NewRegistry()
	r, err := relay.New(db, relay.Config{
		Table:             outboxTable,
		AMQPURLs:          []string{amqpURL},
		ListenDatabaseURL: dsn,
	}, relay.WithLogger(log), relay.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	c, err := inbox.NewConsumer(db, inbox.ConsumerConfig{
		Queue:    queue,
		Table:    inboxTable,
		Consumer: consumer,
		AMQPURLs: []string{amqpURL},
		Bindings: []inbox.Binding{{Exchange: exchange, RoutingKey: "order.created"}},
	}, inbox.WithLogger(log), inbox.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	p, err := inbox.NewProcessor(db, inbox.ProcessorConfig{
		Table: inboxTable, Consumer: consumer, PollInterval: 50 * time.Millisecond, Ordered: true,
	}, ship, inbox.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	purger, err := inbox.NewPurger(db, inbox.PurgerConfig{Table: inboxTable}, inbox.WithLogger(log), inbox.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runs := map[string]func(context.Context) error{"relay": r.Run, "consumer": c.Run, "processor": p.Run, "purger": purger.Run}
	done := make(chan error, len(runs))
	for name, run := range runs {
		go func() {
			if err := run(runCtx); err != nil {
				done <- errors.New(name + ": " + err.Error())
				return
			}
			done <- nil
		}()
	}

	waitFor(t, ctx, "the relay and the consumer to be ready", func() bool { return r.Ready() && c.Ready() })
	waitFor(t, ctx, "order 2 to be shipped", func() bool { return count(t, db, `SELECT count(*) FROM app.shipments WHERE order_id = 2`) == 1 })
	waitFor(t, ctx, "the outbox to be empty", func() bool { return count(t, db, `SELECT count(*) FROM `+outboxTable) == 0 })
	waitFor(t, ctx, "the inbox row to be processed", func() bool {
		return count(t, db, `SELECT count(*) FROM `+inboxTable+` WHERE processed_at IS NOT NULL`) == 1
	})

	// A redelivery of the same message (say, after a broker failover) is a duplicate.
	var messageID string
	if err := db.QueryRowContext(ctx, `SELECT message_id FROM `+inboxTable).Scan(&messageID); err != nil {
		t.Fatal(err)
	}
	publish(t, amqpURL, exchange, amqp.Publishing{MessageId: messageID, Type: "order.created", Body: []byte(`{"order_id":2}`)})
	waitFor(t, ctx, "the redelivery to be counted as a duplicate", func() bool {
		return gathered(t, reg, "sidebox_inbox_duplicates_total") == 1
	})

	stop()
	for range runs {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM app.shipments`); n != 1 {
		t.Errorf("%d shipments, want exactly 1 (order 2, once)", n)
	}
	if n := count(t, db, `SELECT count(*) FROM `+inboxTable); n != 1 {
		t.Errorf("%d inbox rows, want 1", n)
	}
	if got := gathered(t, reg, "sidebox_outbox_published_total"); got != 1 {
		t.Errorf("sidebox_outbox_published_total = %v, want 1", got)
	}
	if got := gathered(t, reg, "sidebox_inbox_stored_total"); got != 1 {
		t.Errorf("sidebox_inbox_stored_total = %v, want 1", got)
	}
}

// ship is the service's handler: it ships the order in the processor's transaction.
func ship(ctx context.Context, tx *sql.Tx, msg inbox.Message) error {
	var body struct {
		OrderID int64 `json:"order_id"`
	}
	if err := json.Unmarshal(msg.Payload, &body); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO app.shipments (order_id, message_id) VALUES ($1, $2)`, body.OrderID, msg.MessageID)
	return err
}

// freshDatabase creates a database of its own on the test server, dropped at the end.
func freshDatabase(t *testing.T, ctx context.Context) (*sql.DB, string) {
	t.Helper()
	base := cmp.Or(os.Getenv(envDatabaseURL), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	name := "sidebox_embed_" + randomHex(6)
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("create database (is PostgreSQL up? run `make test` or set %s): %v", envDatabaseURL, err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`) })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s is not a URL", envDatabaseURL)
	}
	u.Path = "/" + name
	dsn := u.String()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db, dsn
}

// declareExchange declares a topic exchange for the test; the consumer declares and
// binds its queue itself. Both are deleted at the end.
func declareExchange(t *testing.T, amqpURL, exchange, queue string) {
	t.Helper()
	withChannel(t, amqpURL, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	})
	t.Cleanup(func() {
		withChannel(t, amqpURL, func(ch *amqp.Channel) error {
			if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
				return err
			}
			return ch.ExchangeDelete(exchange, false, false)
		})
	})
}

// publish sends msg to exchange with the routing key order.created.
func publish(t *testing.T, amqpURL, exchange string, msg amqp.Publishing) {
	t.Helper()
	withChannel(t, amqpURL, func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "order.created", true, false, msg)
		if err != nil {
			return err
		}
		if ok, err := conf.WaitContext(ctx); err != nil || !ok {
			return errors.Join(err, errors.New("publish not confirmed"))
		}
		return nil
	})
}

func withChannel(t *testing.T, amqpURL string, fn func(*amqp.Channel) error) {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("dial RabbitMQ (is it up? run `make test` or set %s): %v", envAMQPURL, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := fn(ch); err != nil {
		t.Fatal(err)
	}
}

func mustExec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func count(t *testing.T, db *sql.DB, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// gathered sums the values of the counter or gauge family name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// waitFor polls cond until it holds, failing the test when ctx ends first.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
