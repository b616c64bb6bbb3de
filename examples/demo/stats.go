package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// snapshot is the state of the pipeline at one moment, read from the two databases,
// the inbox sidecar's /metrics and the queue.
type snapshot struct {
	attempted int // orders the service tried to place: the orders id sequence, which rollbacks do not rewind
	orders    int // committed orders
	outbox    int // outbox rows: committed, not yet confirmed by RabbitMQ

	inbox       int // messages stored by sidebox inbox
	unprocessed int // stored, not yet processed by the shipping service
	shipped     int // shipments

	metricsOK                              bool // the inbox sidecar's counters below were read
	received, stored, duplicates, rejected int

	queueOK bool
	ready   int // messages waiting in the queue
}

// rolledBack is the number of orders whose transactions rolled back; while orders are
// being placed it includes the few transactions still open.
func (s snapshot) rolledBack() int { return s.attempted - s.orders }

// relayed is the number of committed orders whose event RabbitMQ has confirmed: the
// relay deletes an outbox row once its publication is confirmed.
func (s snapshot) relayed() int { return s.orders - s.outbox }

// drained reports whether everything committed went all the way through: nothing in
// the outbox, the queue or the inbox sidecar's hands, nothing left to process, and as
// many shipments as orders (or more, which the final check reports).
func (s snapshot) drained(injected int) bool {
	return s.outbox == 0 && s.unprocessed == 0 && s.shipped >= s.orders && s.inbox >= s.orders &&
		(!s.queueOK || s.ready == 0) &&
		(!s.metricsOK || s.received == s.stored+s.duplicates+s.rejected && s.duplicates >= injected)
}

func (d *demo) snapshot(ctx context.Context) (snapshot, error) {
	var s snapshot
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := d.ordersDB.QueryRowContext(ctx, `SELECT
  (SELECT count(*) FROM orders),
  (SELECT count(*) FROM outbox),
  coalesce(pg_sequence_last_value(pg_get_serial_sequence('orders', 'id')::regclass), 0)`,
	).Scan(&s.orders, &s.outbox, &s.attempted); err != nil {
		return s, fmt.Errorf("read %s: %w", ordersDBName, err)
	}
	if err := d.shippingDB.QueryRowContext(ctx, `SELECT
  (SELECT count(*) FROM inbox WHERE consumer = $1),
  (SELECT count(*) FROM inbox WHERE consumer = $1 AND processed_at IS NULL),
  (SELECT count(*) FROM shipments)`, queue,
	).Scan(&s.inbox, &s.unprocessed, &s.shipped); err != nil {
		return s, fmt.Errorf("read %s: %w", shippingDBName, err)
	}
	if m, err := scrape(ctx, "http://"+d.inboxAddr+"/metrics"); err == nil {
		s.metricsOK = true
		s.received = int(m["sidebox_inbox_received_total"])
		s.stored = int(m["sidebox_inbox_stored_total"])
		s.duplicates = int(m["sidebox_inbox_duplicates_total"])
		s.rejected = int(m["sidebox_inbox_rejected_total"])
	}
	s.ready, s.queueOK = d.queueDepth()
	return s, nil
}

// scrape reads a Prometheus text exposition and sums each metric over its labels.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}

// queueDepth returns the number of ready messages in the shipping queue.
func (d *demo) queueDepth() (int, bool) {
	if d.amqp == nil || d.amqp.IsClosed() {
		return 0, false
	}
	ch, err := d.amqp.Channel()
	if err != nil {
		return 0, false
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, false
	}
	return q.Messages, true
}

// The progress table: one row per progress line, under a header printed once. The
// columns follow the pipeline; the last two, relay kills and duplicate copies
// injected, are there in chaos mode only. A row fits in 80 columns.
const (
	header      = "  time  orders  rollbacks  outbox  relayed  inbox   dup  shipped"
	rowFormat   = "%5.1fs  %6d  %9d  %6d  %7d  %5d  %4d  %7d"
	chaosHeader = "  kills  copies"
	chaosFormat = "  %5d  %6d"
)

func (d *demo) header() string {
	if d.cfg.chaos {
		return header + chaosHeader
	}
	return header
}

// row renders a progress line.
func (d *demo) row(s snapshot, elapsed time.Duration) string {
	l := fmt.Sprintf(rowFormat, elapsed.Seconds(), s.orders, s.rolledBack(), s.outbox, s.relayed(), s.inbox, s.duplicates, s.shipped)
	if d.cfg.chaos {
		d.mu.Lock()
		l += fmt.Sprintf(chaosFormat, d.kills, d.injected)
		d.mu.Unlock()
	}
	return l
}

// injectDuplicates publishes, every few hundred milliseconds, copies of messages the
// inbox has already stored straight to the queue: the same message_id, as a broker
// redelivery or a publisher retry would bring them. Each copy RabbitMQ confirms is
// counted in d.injected.
func (d *demo) injectDuplicates(ctx context.Context) {
	ch, err := d.amqp.Channel()
	if err != nil {
		d.out.say("  chaos: cannot open a channel to inject duplicates: %v", err)
		return
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		d.out.say("  chaos: cannot inject duplicates: %v", err)
		return
	}
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rows, err := d.shippingDB.QueryContext(ctx, `SELECT message_id, coalesce(message_type, ''), coalesce(content_type, ''), payload
FROM inbox WHERE consumer = $1 ORDER BY random() LIMIT 5`, queue)
		if err != nil {
			continue
		}
		var copies []amqp.Publishing
		for rows.Next() {
			p := amqp.Publishing{DeliveryMode: amqp.Persistent}
			if rows.Scan(&p.MessageId, &p.Type, &p.ContentType, &p.Body) == nil {
				copies = append(copies, p)
			}
		}
		rows.Close()
		for _, p := range copies {
			if !publishConfirmed(ch, p) {
				return
			}
			d.mu.Lock()
			d.injected++
			d.mu.Unlock()
		}
	}
}

// publishConfirmed publishes p to the shipping queue and waits for RabbitMQ's confirm,
// even while the demo stops, so that no copy goes uncounted.
func publishConfirmed(ch *amqp.Channel, p amqp.Publishing) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, p)
	if err != nil {
		return false
	}
	ok, err := dc.WaitContext(ctx)
	return err == nil && ok
}
