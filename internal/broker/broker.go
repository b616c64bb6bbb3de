// Package broker keeps one AMQP connection to RabbitMQ alive for the process: it dials
// the configured URLs in turn, reconnects with capped backoff when the connection is
// lost, and hands out channels to the relay and the inbox consumer.
package broker

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/redact"
)

// Config tunes the connection; zero values take the defaults.
type Config struct {
	Name        string        // connection_name shown in the RabbitMQ management UI; default "sidebox"
	Heartbeat   time.Duration // default 10s
	DialTimeout time.Duration // default 5s
	Backoff     backoff.Policy
}

func (c *Config) setDefaults() {
	c.Name = cmp.Or(c.Name, "sidebox")
	c.Heartbeat = cmp.Or(c.Heartbeat, 10*time.Second)
	c.DialTimeout = cmp.Or(c.DialTimeout, 5*time.Second)
	if c.Backoff.Base == 0 {
		c.Backoff = backoff.Policy{Base: 200 * time.Millisecond, Max: 10 * time.Second}
	}
}

// Broker owns the process's AMQP connection.
type Broker struct {
	urls []string
	cfg  Config
	log  *zap.Logger
	m    *metrics.Metrics

	mu        sync.Mutex
	conn      *amqp.Connection
	connected chan struct{} // closed while conn is usable; replaced when it is lost
}

// New returns a Broker for the given URLs (tried in turn). Call Run to connect.
func New(urls []string, cfg Config, log *zap.Logger, m *metrics.Metrics) *Broker {
	cfg.setDefaults()
	return &Broker{urls: urls, cfg: cfg, log: log, m: m, connected: make(chan struct{})}
}

// Run keeps the connection until ctx is done, then closes it. It never gives up on an
// unreachable broker: it retries with capped backoff, trying each URL in turn.
func (b *Broker) Run(ctx context.Context) {
	failures := 0
	for i := 0; ctx.Err() == nil; i = (i + 1) % len(b.urls) {
		url := b.urls[i]
		conn, err := amqp.DialConfig(url, amqp.Config{
			Heartbeat:  b.cfg.Heartbeat,
			Properties: amqp.Table{"connection_name": b.cfg.Name},
			Dial:       amqp.DefaultDial(b.cfg.DialTimeout),
		})
		if err != nil {
			failures++
			b.log.Warn("cannot connect to RabbitMQ; retrying",
				zap.String("url", redact.URL(url)), zap.Int("failures", failures),
				zap.String("error", redact.Text(err.Error())))
			if !b.cfg.Backoff.Sleep(ctx, failures) {
				break
			}
			continue
		}
		failures = 0
		b.log.Info("connected to RabbitMQ", zap.String("url", redact.URL(url)))
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		b.setConn(conn)
		select {
		case <-ctx.Done():
			b.setConn(nil)
			_ = conn.Close()
			return
		case err := <-closed:
			b.setConn(nil)
			reason := "closed"
			if err != nil {
				reason = err.Error()
			}
			b.log.Warn("lost RabbitMQ connection; reconnecting", zap.String("url", redact.URL(url)), zap.String("reason", redact.Text(reason)))
			// Start the next round with the same URL: it was good until now.
			i--
			if i < -1 {
				i = -1
			}
		}
	}
	b.setConn(nil)
}

func (b *Broker) setConn(c *amqp.Connection) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conn = c
	up := 0.0
	if c != nil {
		up = 1
		close(b.connected)
	} else {
		select {
		case <-b.connected:
			b.connected = make(chan struct{})
		default:
		}
	}
	if b.m != nil {
		b.m.Up.WithLabelValues(metrics.DependencyRabbitMQ).Set(up)
	}
}

// Ready reports whether a connection is open.
func (b *Broker) Ready() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn != nil && !b.conn.IsClosed()
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
// ctx's error when ctx is done first.
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
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
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
