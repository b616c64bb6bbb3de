// Package broker keeps an AMQP connection to RabbitMQ alive: it dials the configured
// URLs in turn, reconnects with capped backoff when the connection is lost, and hands
// out channels.
//
// A process that publishes and consumes keeps one Broker for each (RabbitMQ's own
// advice): during a memory or disk alarm RabbitMQ stops reading from connections that
// publish (connection.blocked), and a consumer sharing such a connection could not
// acknowledge, so could not drain the queues whose draining relieves the alarm.
package broker

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/redact"
)

// Roles of a connection, for Config.Role.
const (
	RolePublish = "publish" // the relay's
	RoleConsume = "consume" // the inbox consumer's
)

// Config tunes the connection; zero values take the defaults.
type Config struct {
	Name        string        // connection_name shown in the RabbitMQ management UI; default "sidebox"
	Role        string        // RolePublish, RoleConsume, or "" for a connection that does both; named in logs and metrics
	TLS         *tls.Config   // for amqps:// URLs; nil: the system's roots and no client certificate
	Heartbeat   time.Duration // default 10s
	DialTimeout time.Duration // default 5s
	Backoff     backoff.Policy
}

func (c *Config) setDefaults() {
	c.Name = cmp.Or(c.Name, "sidebox")
	c.Heartbeat = cmp.Or(c.Heartbeat, 10*time.Second)
	c.DialTimeout = cmp.Or(c.DialTimeout, 5*time.Second)
	if c.Backoff.Base == 0 {
		c.Backoff = backoff.Broker()
	}
}

// closeTimeout bounds the polite close of the connection when Run stops.
const closeTimeout = 2 * time.Second

// CheckURL returns what is wrong with an AMQP URL ("has scheme ..."), or "" when it is
// an amqp:// or amqps:// URL naming a host. The problem never quotes the URL, which may
// hold a password.
func CheckURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil || !strings.Contains(u, "://") {
		return "is not a URL (not shown, it may contain a password); want amqp://user:password@host:5672/vhost"
	}
	if parsed.Scheme != "amqp" && parsed.Scheme != "amqps" {
		return fmt.Sprintf("has scheme %q; want amqp:// or amqps://", parsed.Scheme)
	}
	if parsed.Hostname() == "" {
		return "names no host"
	}
	if _, err := amqp.ParseURI(u); err != nil {
		return "is not a valid AMQP URL (not shown, it may contain a password)"
	}
	return ""
}

// Broker owns one AMQP connection.
type Broker struct {
	urls         []string
	cfg          Config
	log          *zap.Logger
	up           *upGauge
	blockedGauge prometheus.Gauge // sidebox_rabbitmq_blocked of this connection; nil without metrics

	draining  chan struct{} // closed by Drain
	drainOnce sync.Once

	mu        sync.Mutex
	conn      *amqp.Connection
	connected chan struct{} // closed while conn is usable; replaced when it is lost
	blocked   string        // RabbitMQ's reason while it blocks conn, else ""
	lastErr   string        // why the last dial failed (redacted), "" once connected
}

// New returns a Broker for the given URLs (tried in turn). Call Run to connect. With
// m, it keeps sidebox_up{dependency="rabbitmq"} (see Join for several brokers) and
// sidebox_rabbitmq_blocked.
func New(urls []string, cfg Config, log *zap.Logger, m *metrics.Metrics) *Broker {
	cfg.setDefaults()
	b := &Broker{urls: urls, cfg: cfg, log: log, connected: make(chan struct{}), draining: make(chan struct{})}
	if cfg.Role != "" {
		b.log = log.With(zap.String("connection", cfg.Role))
	}
	b.up = &upGauge{brokers: []*Broker{b}}
	if m != nil {
		b.up.g = m.Up.WithLabelValues(metrics.DependencyRabbitMQ)
		b.blockedGauge = m.RabbitMQBlocked.WithLabelValues(cmp.Or(cfg.Role, "shared"))
		b.blockedGauge.Set(0)
	}
	return b
}

// Join makes the brokers one dependency for sidebox_up{dependency="rabbitmq"}: 1 while
// every one of them is connected. Call it before their Run.
func Join(bs ...*Broker) {
	u := &upGauge{brokers: bs}
	for _, b := range bs {
		u.g = cmp.Or(u.g, b.up.g)
		b.up = u
	}
	u.update()
}

// upGauge is sidebox_up{dependency="rabbitmq"} of the brokers that share it.
type upGauge struct {
	mu      sync.Mutex
	brokers []*Broker
	g       prometheus.Gauge // nil without metrics
}

func (u *upGauge) update() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.g == nil {
		return
	}
	v := 1.0
	for _, b := range u.brokers {
		if !b.Ready() {
			v = 0
		}
	}
	u.g.Set(v)
}

// Role returns the connection's role from its Config.
func (b *Broker) Role() string { return b.cfg.Role }

// what names the connection in log messages.
func (b *Broker) what() string {
	switch b.cfg.Role {
	case RolePublish:
		return "the publishing connection"
	case RoleConsume:
		return "the consuming connection"
	}
	return "the connection"
}

// Run keeps the connection until ctx is done, then closes it. It never gives up on an
// unreachable broker: it retries with capped backoff, trying each URL in turn.
func (b *Broker) Run(ctx context.Context) {
	defer b.setConn(nil)
	failures := 0
	for i := 0; ctx.Err() == nil; i = (i + 1) % len(b.urls) {
		url := b.urls[i]
		conn, err := amqp.DialConfig(url, amqp.Config{
			Heartbeat:       b.cfg.Heartbeat,
			Properties:      amqp.Table{"connection_name": b.cfg.Name},
			Dial:            amqp.DefaultDial(b.cfg.DialTimeout),
			TLSClientConfig: b.cfg.TLS.Clone(), // the client sets ServerName per URL in it
		})
		if err != nil {
			failures++
			msg := redact.Text(err.Error())
			b.setLastErr(msg)
			b.log.Warn("cannot connect to RabbitMQ; retrying",
				zap.String("url", redact.URL(url)), zap.Int("failures", failures), zap.String("error", msg))
			if !b.cfg.Backoff.Sleep(ctx, failures) {
				return
			}
			continue
		}
		failures = 0
		b.log.Info("connected to RabbitMQ", zap.String("url", redact.URL(url)))
		if !b.hold(ctx, conn, url) {
			<-ctx.Done() // abandoned while draining: no new connection
			return
		}
		// Start the next round with the same URL: it was good until now.
		i--
		if i < -1 {
			i = -1
		}
	}
}

// hold serves conn until ctx is done or conn is lost or abandoned. It reports whether
// Run should connect again.
func (b *Broker) hold(ctx context.Context, conn *amqp.Connection, url string) bool {
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	// The client hands notifications over from its reader goroutine: keep up with them.
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	b.setConn(conn)
	defer b.setBlocked("")
	draining := b.draining
	for {
		select {
		case <-ctx.Done():
			b.setConn(nil)
			deadline := time.Now().Add(closeTimeout)
			if b.Blocked() != "" {
				deadline = time.Now() // RabbitMQ reads nothing from it, not even close
			}
			_ = conn.CloseDeadline(deadline)
			return false
		case err := <-closed:
			b.setConn(nil)
			reason := "closed"
			if err != nil {
				reason = err.Error()
			}
			b.log.Warn("lost RabbitMQ connection; reconnecting", zap.String("url", redact.URL(url)), zap.String("reason", redact.Text(reason)))
			return true
		case bl, ok := <-blocks:
			switch {
			case !ok:
				blocks = nil // the connection is going; closed says why
				continue
			case bl.Active:
				b.setBlocked(cmp.Or(bl.Reason, "no reason given"))
				b.log.Warn("RabbitMQ blocked " + b.what() + ": " + b.Blocked())
			default:
				b.setBlocked("")
				b.log.Info("RabbitMQ unblocked " + b.what())
			}
		case <-draining:
			draining = nil
		}
		if draining == nil && b.Blocked() != "" {
			// Nothing sent on a blocked connection is confirmed or acknowledged until
			// the alarm clears; a drain must not wait for that.
			b.log.Warn("closing " + b.what() + " for the shutdown while RabbitMQ blocks it; what it did not confirm stays to be published again")
			b.setConn(nil)
			_ = conn.CloseDeadline(time.Now())
			return false
		}
	}
}

// Drain tells the broker that the process is shutting down: from now on a connection
// that RabbitMQ blocks (a memory or disk alarm) is closed at once rather than waited
// on, so that the drain ends within its grace period; the messages it did not confirm
// stay in the outbox and are published again later. Run still closes the connection
// only when its context is done.
func (b *Broker) Drain() {
	b.drainOnce.Do(func() { close(b.draining) })
}

func (b *Broker) setConn(c *amqp.Connection) {
	b.mu.Lock()
	b.conn = c
	if c != nil {
		b.lastErr = ""
		close(b.connected)
	} else {
		select {
		case <-b.connected:
			b.connected = make(chan struct{})
		default:
		}
	}
	b.mu.Unlock()
	b.up.update()
}

func (b *Broker) setBlocked(reason string) {
	b.mu.Lock()
	b.blocked = reason
	b.mu.Unlock()
	if b.blockedGauge != nil {
		if reason != "" {
			b.blockedGauge.Set(1)
		} else {
			b.blockedGauge.Set(0)
		}
	}
}

func (b *Broker) setLastErr(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastErr = msg
}

// Ready reports whether a connection is open. A connection that RabbitMQ blocks is
// open: it is reported by Blocked and sidebox_rabbitmq_blocked, not as unready.
func (b *Broker) Ready() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil && !b.conn.IsClosed()
}

// Problem describes why the broker is not ready, "" when it is: the last dial error
// (redacted) while it has no connection.
func (b *Broker) Problem() string {
	if b.Ready() {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lastErr != "" {
		return "not connected to RabbitMQ: " + b.lastErr
	}
	return "not connected to RabbitMQ"
}

// Blocked returns RabbitMQ's reason ("low on memory", "low on disk") while it blocks
// the connection, else "".
func (b *Broker) Blocked() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blocked
}

// FrameSize returns the frame size negotiated on the current connection, or 0 while
// there is none. A message's content header (its properties and headers table) must
// fit in one frame.
func (b *Broker) FrameSize() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return 0
	}
	return b.conn.Config.FrameSize
}

// Channel opens a channel, waiting for a connection while there is none. It returns
// ctx's error when ctx is done first, also while RabbitMQ, blocking the connection,
// leaves the request unanswered.
func (b *Broker) Channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		b.mu.Lock()
		conn, connected := b.conn, b.connected
		b.mu.Unlock()
		if conn == nil {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-connected:
				continue
			}
		}
		ch, err := openChannel(ctx, conn)
		if err == nil {
			return ch, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("open AMQP channel: %w", err)
		}
		// The connection died under us; Run will replace it.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// openChannel opens a channel on conn, giving up when ctx is done: the client's own
// call has no deadline and waits as long as the server does not answer. An abandoned
// request is left to finish (or fail with the connection) and its channel closed.
func openChannel(ctx context.Context, conn *amqp.Connection) (*amqp.Channel, error) {
	type opened struct {
		ch  *amqp.Channel
		err error
	}
	done := make(chan opened, 1)
	go func() {
		ch, err := conn.Channel()
		done <- opened{ch, err}
	}()
	select {
	case o := <-done:
		return o.ch, o.err
	case <-ctx.Done():
		go func() {
			if o := <-done; o.err == nil {
				_ = o.ch.Close()
			}
		}()
		return nil, fmt.Errorf("open AMQP channel: %w", ctx.Err())
	}
}
