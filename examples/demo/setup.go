package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/examples/orders/orders"
	"github.com/sidebox/sidebox/examples/shipping/shipping"
	"github.com/sidebox/sidebox/internal/redact"
)

// The demo's names. Each service has a database of its own, on the same server.
const (
	ordersDBName   = "sidebox_demo_orders"
	shippingDBName = "sidebox_demo_shipping"
	exchange       = "orders"          // the order service publishes here (topic)
	queue          = "shipping.orders" // the shipping service's queue
	bindings       = "orders:order.*"  // what sidebox inbox binds it to
)

// build compiles the example services, and the sidebox binary when there is none.
func (d *demo) build(ctx context.Context) error {
	pkgs := []string{"./examples/orders", "./examples/shipping"}
	if !exists(d.sidebox) {
		if os.Getenv("SIDEBOX_BIN") != "" {
			return fmt.Errorf("SIDEBOX_BIN: %s does not exist", d.sidebox)
		}
		d.out.say("  (no %s: building sidebox too; `make demo` builds it first)", d.cfg.sidebox)
		pkgs = append(pkgs, "./cmd/sidebox")
		d.sidebox = filepath.Join(d.binDir, "sidebox")
	}
	args := append([]string{"build", "-o", d.binDir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

// databases drops and recreates both services' databases, so every run starts clean.
func (d *demo) databases(ctx context.Context) error {
	admin, err := sql.Open("postgres", d.cfg.databaseURL)
	if err != nil {
		return fmt.Errorf("open %s: %w", redact.URL(d.cfg.databaseURL), err)
	}
	defer admin.Close()
	for _, name := range []string{ordersDBName, shippingDBName} {
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			return fmt.Errorf("drop database %s on %s: %w", name, redact.URL(d.cfg.databaseURL), err)
		}
		if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
			return fmt.Errorf("create database %s on %s: %w", name, redact.URL(d.cfg.databaseURL), err)
		}
	}
	if d.ordersURL, err = withDatabase(d.cfg.databaseURL, ordersDBName); err != nil {
		return err
	}
	if d.shippingURL, err = withDatabase(d.cfg.databaseURL, shippingDBName); err != nil {
		return err
	}
	if d.ordersDB, err = sql.Open("postgres", d.ordersURL); err != nil {
		return fmt.Errorf("open %s: %w", ordersDBName, err)
	}
	if d.shippingDB, err = sql.Open("postgres", d.shippingURL); err != nil {
		return fmt.Errorf("open %s: %w", shippingDBName, err)
	}
	return nil
}

// withDatabase returns the server's URL (or key=value DSN) naming database name.
func withDatabase(server, name string) (string, error) {
	if !strings.Contains(server, "://") {
		return strings.TrimSpace(server) + " dbname=" + name, nil // a later key wins
	}
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", redact.URL(server), err)
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String(), nil
}

// migrate runs `sidebox migrate up` on both databases, as a user would, and creates
// the services' own tables (each service also does that when it starts).
func (d *demo) migrate(ctx context.Context) error {
	for _, dbURL := range []string{d.ordersURL, d.shippingURL} {
		cmd := exec.CommandContext(ctx, d.sidebox, "migrate", "up")
		cmd.Env = append(baseEnv(), "SIDEBOX_DATABASE_URL="+dbURL, "SIDEBOX_LOG_FORMAT=console")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("sidebox migrate up (%s): %w\n%s", redact.URL(dbURL), err, out)
		}
	}
	if err := orders.Migrate(ctx, d.ordersDB); err != nil {
		return err
	}
	return shipping.Migrate(ctx, d.shippingDB)
}

// topology declares the order service's exchange and removes the shipping queue a
// previous run may have left with messages in it. The queue itself, and its binding,
// are declared by sidebox inbox (SIDEBOX_INBOX_BINDINGS).
func (d *demo) topology(ctx context.Context) error {
	conn, err := amqp.DialConfig(d.cfg.amqpURL, amqp.Config{
		Properties: amqp.Table{"connection_name": "sidebox demo"},
		Dial:       amqp.DefaultDial(5 * time.Second),
	})
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ at %s: %w", redact.URL(d.cfg.amqpURL), err)
	}
	d.amqp = conn
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open AMQP channel: %w", err)
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", exchange, err)
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		return fmt.Errorf("delete queue %s left by an earlier run: %w", queue, err)
	}
	return ctx.Err()
}

// The sidecars' environments: the contract's variables, nothing else.

func (d *demo) relayEnv() []string {
	return []string{
		"SIDEBOX_DATABASE_URL=" + d.ordersURL,
		"SIDEBOX_AMQP_URL=" + d.cfg.amqpURL,
		"SIDEBOX_HTTP_ADDR=" + d.relayAddr,
		"SIDEBOX_LOG_FORMAT=console",
	}
}

func (d *demo) inboxEnv() []string {
	return []string{
		"SIDEBOX_DATABASE_URL=" + d.shippingURL,
		"SIDEBOX_AMQP_URL=" + d.cfg.amqpURL,
		"SIDEBOX_INBOX_QUEUE=" + queue,
		"SIDEBOX_INBOX_BINDINGS=" + bindings, // declares the queue and binds it
		"SIDEBOX_HTTP_ADDR=" + d.inboxAddr,
		"SIDEBOX_LOG_FORMAT=console",
	}
}

func (d *demo) startRelay() (*child, error) {
	return start("sidebox relay", d.sidebox, []string{"relay"}, d.relayEnv(), filepath.Join(d.dir, "relay.log"))
}

// startAll starts the pipeline from its end: the inbox first (it declares the queue,
// so nothing the relay publishes is unroutable), then the relay, shipping, and last
// the order service.
func (d *demo) startAll(ctx context.Context) error {
	var err error
	if d.inboxAddr, err = freeAddr(); err != nil {
		return err
	}
	if d.relayAddr, err = freeAddr(); err != nil {
		return err
	}
	if d.inbox, err = start("sidebox inbox", d.sidebox, []string{"inbox"}, d.inboxEnv(), filepath.Join(d.dir, "inbox.log")); err != nil {
		return err
	}
	if err := d.inbox.waitReady(ctx, "http://"+d.inboxAddr+"/readyz", 30*time.Second); err != nil {
		return err
	}
	d.mu.Lock()
	d.relay, err = d.startRelay()
	relay := d.relay
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := relay.waitReady(ctx, "http://"+d.relayAddr+"/readyz", 30*time.Second); err != nil {
		return err
	}
	if d.shipping, err = start("shipping", filepath.Join(d.binDir, "shipping"), nil, []string{
		"SHIPPING_DATABASE_URL=" + d.shippingURL,
		"SHIPPING_CONSUMER=" + queue, // the inbox consumer name defaults to the queue's
	}, filepath.Join(d.dir, "shipping.log")); err != nil {
		return err
	}
	d.orders, err = start("orders", filepath.Join(d.binDir, "orders"), nil, []string{
		"ORDERS_DATABASE_URL=" + d.ordersURL,
		"ORDERS_EXCHANGE=" + exchange,
		fmt.Sprintf("ORDERS_COUNT=%d", d.cfg.orders),
		fmt.Sprintf("ORDERS_RATE=%d", d.cfg.rate),
		fmt.Sprintf("ORDERS_DECLINE_RATE=%g", d.cfg.declineRate),
	}, filepath.Join(d.dir, "orders.log"))
	return err
}

// stopAll stops every child still running, the order service first, and reports the
// ones that did not exit cleanly.
func (d *demo) stopAll() []error {
	d.mu.Lock()
	relay := d.relay
	d.mu.Unlock()
	var errs []error
	for _, c := range []*child{d.orders, relay, d.shipping, d.inbox} {
		if c == nil {
			continue
		}
		if err := c.stop(15 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("%w (log: %s)", err, c.log))
		}
	}
	return errs
}
