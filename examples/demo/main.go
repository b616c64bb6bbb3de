// Command demo is what `make demo` runs: the whole sidebox path, from an order service
// writing orders and their events in one transaction, through the outbox, the relay,
// RabbitMQ and the inbox, to a shipping service creating one shipment per order. It
// shows a live progress line and ends with a check anyone can read: orders = shipments.
//
// With DEMO_CHAOS=1 it SIGKILLs and restarts the relay every second or so and injects
// copies of delivered messages into the queue while orders are placed; the check still
// holds, and the summary shows how many duplicates the inbox absorbed.
//
// Run it from the repository root after `make build` (or through `make demo`).
// Environment:
//
//	SIDEBOX_TEST_DATABASE_URL  PostgreSQL server (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)
//	SIDEBOX_TEST_AMQP_URL      RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/)
//	DEMO_ORDERS                orders to place (default 2000)
//	DEMO_RATE                  orders per second (default 500)
//	DEMO_CHAOS                 1 to kill the relay and inject duplicates
//	SIDEBOX_BIN                the sidebox binary (default bin/sidebox, built when missing)
//
// See docs/demo.md for how to read its output.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/lib/pq"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/examples/demo/verify"
	"github.com/sidebox/sidebox/internal/redact"
)

type config struct {
	databaseURL string // the PostgreSQL server; the demo creates its databases there
	amqpURL     string
	orders      int
	rate        int
	declineRate float64
	chaos       bool
	sidebox     string
}

func loadConfig() (config, error) {
	cfg := config{
		databaseURL: envOr("SIDEBOX_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		amqpURL:     envOr("SIDEBOX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		orders:      2000,
		rate:        500,
		declineRate: 0.1,
		sidebox:     envOr("SIDEBOX_BIN", filepath.Join("bin", "sidebox")),
	}
	for name, v := range map[string]*int{"DEMO_ORDERS": &cfg.orders, "DEMO_RATE": &cfg.rate} {
		if s := os.Getenv(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return cfg, fmt.Errorf("%s: want a positive integer, got %q", name, s)
			}
			*v = n
		}
	}
	switch s := os.Getenv("DEMO_CHAOS"); s {
	case "", "0", "false":
	case "1", "true":
		cfg.chaos = true
	default:
		return cfg, fmt.Errorf("DEMO_CHAOS: want 1 or 0, got %q", s)
	}
	return cfg, nil
}

func envOr(name, def string) string {
	if s := os.Getenv(name); s != "" {
		return s
	}
	return def
}

// demo is one run: its databases, its RabbitMQ connection and its child processes.
type demo struct {
	cfg     config
	out     *printer
	dir     string // .sidebox/demo: logs
	binDir  string // the example services' binaries
	sidebox string // the sidebox binary

	ordersURL, shippingURL string
	ordersDB, shippingDB   *sql.DB
	amqp                   *amqp.Connection
	relayAddr, inboxAddr   string // the sidecars' HTTP servers

	inbox, shipping, orders *child

	mu       sync.Mutex
	relay    *child // replaced on every chaos kill
	kills    int
	injected int
}

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 2
	}
	if _, err := os.Stat("go.mod"); err != nil {
		fmt.Fprintln(os.Stderr, "demo: run me from the repository root: make demo")
		return 2
	}

	// First Ctrl-C: stop placing orders and let the pipeline drain. Second: stop now.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	interrupt, abort := make(chan struct{}), make(chan struct{})
	go func() {
		<-sigs
		close(interrupt)
		<-sigs
		close(abort)
	}()

	d := &demo{cfg: cfg, out: newPrinter(os.Stdout), sidebox: cfg.sidebox}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func() {
		if d.amqp != nil {
			_ = d.amqp.Close()
		}
		for _, db := range []*sql.DB{d.ordersDB, d.shippingDB} {
			if db != nil {
				_ = db.Close()
			}
		}
	}()

	setupCtx, stopSetup := context.WithCancel(ctx)
	go func() {
		select {
		case <-interrupt:
			stopSetup()
		case <-setupCtx.Done():
		}
	}()
	err = d.setup(setupCtx)
	stopSetup()
	if err != nil {
		d.stopAll()
		select {
		case <-interrupt:
			d.out.say("interrupted before the demo started")
			return 0
		default:
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}

	res := d.watch(ctx, interrupt, abort)
	d.out.keep()
	d.out.say("stopping: SIGTERM to every process")
	for _, err := range d.stopAll() {
		d.out.say("  warning: %v", err)
	}
	return d.summary(ctx, res)
}

// setup prepares everything and starts the children.
func (d *demo) setup(ctx context.Context) error {
	mode := ""
	if d.cfg.chaos {
		mode = ", with chaos: relay SIGKILLed every second or so, duplicate deliveries injected"
	}
	d.out.say("sidebox demo: %d orders at %d/s%s", d.cfg.orders, d.cfg.rate, mode)
	d.out.say("  orders → outbox → sidebox relay → RabbitMQ → sidebox inbox → inbox → shipping")
	d.out.say("  servers:   %s, %s", redact.URL(d.cfg.databaseURL), redact.URL(d.cfg.amqpURL))

	d.dir = filepath.Join(".sidebox", "demo")
	d.binDir = filepath.Join(d.dir, "bin")
	if err := os.RemoveAll(d.dir); err != nil {
		return fmt.Errorf("clean %s: %w", d.dir, err)
	}
	if err := os.MkdirAll(d.binDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d.binDir, err)
	}

	steps := []struct {
		what string
		do   func(context.Context) error
	}{
		{"build:     examples/orders, examples/shipping → " + d.binDir, d.build},
		{"databases: " + ordersDBName + ", " + shippingDBName + " (dropped and created afresh)", d.databases},
		{"migrate:   sidebox migrate up on both; the services' orders and shipments tables", d.migrate},
		{"rabbitmq:  exchange " + exchange + " (topic); queue " + queue + " declared and bound by sidebox inbox (SIDEBOX_INBOX_BINDINGS=" + bindings + ")", d.topology},
		{"start:     sidebox inbox, sidebox relay, shipping, orders; logs in " + d.dir + "/*.log", d.startAll},
	}
	for _, s := range steps {
		d.out.say("  %s", s.what)
		if err := s.do(ctx); err != nil {
			return err
		}
	}
	return nil
}

// result is how the run ended.
type result struct {
	drained     bool          // everything committed went all the way through
	interrupted bool          // Ctrl-C
	failure     string        // a child died, or the pipeline did not drain in time
	elapsed     time.Duration // from the first order
	last        snapshot
}

// drainTimeout bounds the wait for the pipeline to drain once orders stopped.
const drainTimeout = 30 * time.Second

// watch shows progress until every order went through, a child fails, or the user
// interrupts; in chaos mode it runs the chaos while orders are placed.
func (d *demo) watch(ctx context.Context, interrupt, abort <-chan struct{}) result {
	began := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var printed time.Time // plain output: a progress line a second
	d.out.say("")
	d.out.say("%s", d.header())

	chaosCtx, stopChaos := context.WithCancel(ctx)
	var chaos sync.WaitGroup
	if d.cfg.chaos {
		chaos.Go(func() { d.killRelay(chaosCtx) })
		chaos.Go(func() { d.injectDuplicates(chaosCtx) })
	}
	endChaos := func() {
		stopChaos()
		chaos.Wait()
	}
	defer endChaos()

	var (
		res        result
		ordersDone = d.orders.done
		deadline   <-chan time.Time // set once orders stopped
		wasDrained bool
	)
	for {
		select {
		case <-abort:
			res.interrupted = true
			return res
		case <-interrupt:
			interrupt = nil
			res.interrupted = true
			d.out.say("interrupted: no more orders; waiting up to %s for the pipeline to drain (Ctrl-C again to stop now)", drainTimeout)
			_ = d.orders.stop(10 * time.Second)
		case <-ordersDone:
			ordersDone = nil
			endChaos()
			deadline = time.After(drainTimeout)
			if d.orders.err != nil && !res.interrupted {
				res.failure = fmt.Sprintf("the order service failed (%v); its log ends with:\n%s", d.orders.err, d.orders.tail(10))
				return res
			}
			d.out.say("orders stopped after %.1fs; waiting for the pipeline to drain", time.Since(began).Seconds())
		case <-deadline:
			res.failure = fmt.Sprintf("the pipeline did not drain within %s after the last order; see the logs in %s", drainTimeout, d.dir)
			return res
		case <-tick.C:
		}
		res.elapsed = time.Since(began)

		if msg := d.crashed(); msg != "" {
			res.failure = msg
			return res
		}
		s, err := d.snapshot(ctx)
		if err != nil {
			d.out.say("  (progress: %v)", err)
			continue
		}
		res.last = s
		// Drained twice in a row, so a delivery in flight between two counters is not missed.
		d.mu.Lock()
		drained := ordersDone == nil && s.drained(d.injected)
		d.mu.Unlock()
		finished := drained && wasDrained
		wasDrained = drained
		if d.out.tty || finished || time.Since(printed) >= time.Second {
			d.out.update(d.row(s, res.elapsed))
			printed = time.Now()
		}
		if finished {
			res.drained = true
			return res
		}
	}
}

// crashed describes a sidecar or service that exited on its own, or returns "".
func (d *demo) crashed() string {
	d.mu.Lock()
	relay := d.relay
	d.mu.Unlock()
	for _, c := range []*child{d.inbox, relay, d.shipping} {
		if c.exited() {
			return fmt.Sprintf("%s exited unexpectedly (%v); its log %s ends with:\n%s", c.name, c.err, c.log, c.tail(10))
		}
	}
	return ""
}

// killRelay SIGKILLs the relay at random intervals of about a second and starts a new
// one at once. Rows the killed relay had published but not yet deleted are published
// again by the next one: duplicates, which the inbox absorbs.
func (d *demo) killRelay(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(600*time.Millisecond + rand.N(800*time.Millisecond)):
		}
		d.mu.Lock()
		d.relay.kill()
		relay, err := d.startRelay()
		if err == nil {
			d.relay = relay
			d.kills++
		}
		n := d.kills
		d.mu.Unlock()
		if err != nil {
			d.out.say("  chaos: cannot restart the relay: %v", err)
			return
		}
		d.out.say("  chaos: relay SIGKILLed (%d) and restarted", n)
	}
}

// summary prints the outcome and returns the exit code: 0 when orders and shipments
// match, or when interrupted before the end without a mismatch.
func (d *demo) summary(ctx context.Context, res result) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The databases' final word; the inbox sidecar's counters are from its last
	// snapshot, taken before it was stopped.
	if s, err := d.snapshot(ctx); err == nil {
		s.metricsOK, s.received, s.stored, s.duplicates, s.rejected =
			res.last.metricsOK, res.last.received, res.last.stored, res.last.duplicates, res.last.rejected
		res.last = s
	}
	rep, err := verify.Compare(ctx, d.ordersDB, d.shippingDB)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: final check:", err)
		return 1
	}
	s := res.last
	d.mu.Lock()
	kills, injected := d.kills, d.injected
	d.mu.Unlock()

	d.out.say("")
	d.out.say("summary after %.1fs", res.elapsed.Seconds())
	d.out.say("  orders    %5d attempted: %d committed, %d rolled back after writing their event", s.attempted, s.orders, s.rolledBack())
	d.out.say("  relay     %5d published and confirmed; %d left in the outbox", s.relayed(), s.outbox)
	d.out.say("  inbox     %5d stored; %d duplicate deliveries absorbed; %d left to process", s.inbox, s.duplicates, s.unprocessed)
	d.out.say("  shipping  %5d shipments", s.shipped)
	if d.cfg.chaos {
		d.out.say("  chaos     relay SIGKILLed %d times; %d copies injected into the queue, so %d duplicates were the relay republishing after a kill",
			kills, injected, max(0, s.duplicates-injected))
	}
	d.out.say("  logs      %s/{orders,relay,inbox,shipping}.log", d.dir)
	d.out.say("")

	bad := len(rep.Duplicated) > 0 || len(rep.Phantom) > 0
	switch {
	case rep.OK() && res.failure == "":
		d.out.say("OK: %d orders = %d shipments; 0 phantom events (%d rolled-back orders never shipped); %d duplicate deliveries absorbed",
			rep.Orders, rep.Shipments, s.rolledBack(), s.duplicates)
		return 0
	case res.interrupted && !bad && res.failure == "":
		d.out.say("INTERRUPTED: %d orders, %d shipped so far, none twice, none phantom; %d still on their way when stopped",
			rep.Orders, rep.Shipments, len(rep.Missing))
		return 0
	}
	if res.failure != "" {
		d.out.say("FAIL: %s", res.failure)
	}
	d.out.say("FAIL: %s", rep)
	for _, l := range []struct {
		what string
		ids  []int64
	}{{"missing", rep.Missing}, {"shipped more than once", rep.Duplicated}, {"phantom (never committed)", rep.Phantom}} {
		if len(l.ids) > 0 {
			d.out.say("  orders %s: %s", l.what, list(l.ids, 10))
		}
	}
	return 1
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// list formats up to n IDs.
func list(ids []int64, n int) string {
	var b strings.Builder
	for i, id := range ids {
		if i == n {
			fmt.Fprintf(&b, " … (%d in all)", len(ids))
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}
