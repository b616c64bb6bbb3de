package cli_test

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// amqpChannel opens a channel on the test broker, closed at cleanup.
func amqpChannel(t *testing.T) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(testenv.AMQPURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// cleanupTopology deletes exchanges and queues the test made sidebox declare.
func cleanupTopology(t *testing.T, exchanges, queues []string) {
	t.Cleanup(func() {
		conn, err := amqp.Dial(testenv.AMQPURL(t))
		if err != nil {
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		for _, q := range queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
		for _, e := range exchanges {
			_ = ch.ExchangeDelete(e, false, false)
		}
	})
}

// On a broker where the exchange does not exist, SIDEBOX_OUTBOX_DECLARE and
// SIDEBOX_OUTBOX_BINDINGS give the first message somewhere to go.
func TestOutboxTopologyDeclared(t *testing.T) {
	t.Parallel()
	db, dsn := testenv.DB(t)
	exchange, queue := testenv.Name(t, "cli_topo_ex"), testenv.Name(t, "cli_topo_q")
	cleanupTopology(t, []string{exchange}, []string{queue})
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_OUTBOX_DECLARE=" + exchange,
		"SIDEBOX_OUTBOX_BINDINGS=" + queue + ":" + exchange + ":order.*",
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	testenv.Exec(t, db, `INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, 'order.created', convert_to('{"id":42}', 'UTF8'))`, exchange)
	d := start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"relay":"ok"`) // declared before the relay starts
	ch := amqpChannel(t)
	testenv.Eventually(t, 15*time.Second, "the message in the declared queue", func() bool {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Messages == 1
	})
	testenv.Eventually(t, 15*time.Second, "the row deleted once confirmed", func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM outbox`) == 0
	})
	if !strings.Contains(d.log(), `"msg":"declared the outbox topology"`) {
		t.Errorf("no log line for the declaration:\n%s", d.log())
	}
	// A second start declares the same again without complaint.
	d.stop(t, 15)
	d = start(t, vars, "relay")
	d.waitFor(t, "/readyz", 200, `"relay":"ok"`)
}

// An exchange that exists with another type stops sidebox with exit code 2 and a
// message naming both definitions; so does a binding to an exchange nobody declared.
func TestOutboxTopologyConflict(t *testing.T) {
	t.Parallel()
	dsn := testenv.DatabaseURL(t)
	exchange, missing, queue := testenv.Name(t, "cli_topo_ex"), testenv.Name(t, "cli_topo_none"), testenv.Name(t, "cli_topo_q")
	cleanupTopology(t, []string{exchange}, []string{queue})
	if err := amqpChannel(t).ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	base := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
	}
	r := run(t, append(base, "SIDEBOX_OUTBOX_DECLARE="+exchange+":topic"), "relay")
	if r.code != 2 {
		t.Fatalf("want exit 2, got %s", r)
	}
	for _, want := range []string{"SIDEBOX_OUTBOX_DECLARE: exchange \"" + exchange + "\" exists with another definition",
		"sidebox declares it as " + exchange + ":topic", "received 'topic' but current is 'direct'"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	r = run(t, append(base, "SIDEBOX_OUTBOX_BINDINGS="+queue+":"+missing+":#"), "relay")
	if r.code != 2 || !strings.Contains(r.stderr, "SIDEBOX_OUTBOX_BINDINGS: cannot bind queue \""+queue+"\" to exchange \""+missing+"\": the exchange does not exist") {
		t.Errorf("want exit 2 naming the missing exchange, got %s", r)
	}
	r = run(t, append(base, "SIDEBOX_OUTBOX_DECLARE=orders:fan"), "relay")
	if r.code != 2 || !strings.Contains(r.stderr, `SIDEBOX_OUTBOX_DECLARE: exchange "orders:fan" has type "fan"; want one of direct, fanout, topic, headers`) {
		t.Errorf("want exit 2 for a bad type, got %s", r)
	}
}
