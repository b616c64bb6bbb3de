// Package sidecar is the daemon behind `sidebox run`, `sidebox relay` and `sidebox
// inbox`. It owns which components run in each mode, how they are built from the
// checked configuration (relay, inbox consumer and purger, backlog sampler), the AMQP
// connections they use, the /healthz, /readyz and /metrics server with its checks, and
// the shutdown order: readiness fails, the components drain, then the broker
// connections and the HTTP server stop.
//
// Reading the environment and turning outcomes into exit codes is internal/cli's job.
package sidecar

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/backoff"
	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/health"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/internal/status"
)

// Mode is what a long-running command runs.
type Mode string

// The long-running commands.
const (
	ModeRun   Mode = "run"   // relay, plus the inbox consumer when a queue is configured
	ModeRelay Mode = "relay" // relay only
	ModeInbox Mode = "inbox" // inbox consumer only
)

// Parts says which components a mode runs with the configuration cfg (loaded, not yet
// checked: only SIDEBOX_INBOX_QUEUE is read).
func Parts(md Mode, cfg *config.Config) (withRelay, withInbox bool) {
	return md != ModeInbox, md == ModeInbox || (md == ModeRun && cfg.InboxQueue != "")
}

// Groups returns the configuration groups a mode checks with cfg.
func Groups(md Mode, cfg *config.Config) config.Group {
	withRelay, withInbox := Parts(md, cfg)
	groups := config.Database | config.Broker | config.Server | config.Log
	if withRelay {
		groups |= config.Outbox | config.Relay
	}
	if withInbox {
		groups |= config.Inbox | config.Consumer
	}
	return groups
}

// Build identifies the binary in the log and in sidebox_build_info.
type Build struct {
	Version string
	Commit  string
}

// Run runs md with cfg, checked for Groups(md, cfg), until ctx is cancelled, then
// drains within SIDEBOX_SHUTDOWN_TIMEOUT. Closing forced (say, at a second signal)
// stops the drain early. The error is what made it stop, nil after a clean drain.
func Run(ctx context.Context, md Mode, cfg *config.Config, log *zap.Logger, build Build, forced <-chan struct{}) error {
	withRelay, withInbox := Parts(md, cfg)
	s := &sidecar{cfg: cfg, log: log, mode: md, withRelay: withRelay, withInbox: withInbox, build: build, forced: forced}
	return s.run(ctx)
}

// sidecar is one run of a long-running command.
type sidecar struct {
	cfg       *config.Config
	log       *zap.Logger
	mode      Mode
	withRelay bool
	withInbox bool
	build     Build
	forced    <-chan struct{}
	tp        trace.TracerProvider // nil: tracing off
}

// component is a part that runs until its context is cancelled and then drains.
type component struct {
	name string
	run  func(ctx context.Context) error
}

func (s *sidecar) run(ctx context.Context) error {
	cfg, log := s.cfg, s.log
	version, commit := s.build.Version, s.build.Commit
	tp, stopTracing, err := startTracing(ctx, log, version)
	if err != nil {
		return err
	}
	defer stopTracing() // after the drain: the last batches' spans are exported too
	s.tp = tp

	log.Info("starting sidebox",
		zap.String("command", string(s.mode)), zap.String("version", version), zap.String("commit", commit),
		zap.Bool("relay", s.withRelay), zap.Bool("inbox", s.withInbox),
		zap.Any("config", cfg.Redacted()))
	if unknown := config.Unknown(); len(unknown) > 0 {
		log.Warn("ignoring unknown SIDEBOX_ variables; misspelt?", zap.Strings("variables", unknown))
	}
	if cfg.AMQPTLS != nil && !slices.ContainsFunc(cfg.AMQPURLs, func(u string) bool { return strings.HasPrefix(u, "amqps://") }) {
		log.Warn("SIDEBOX_AMQP_CA_FILE, SIDEBOX_AMQP_CERT_FILE and SIDEBOX_AMQP_KEY_FILE apply to amqps:// URLs only; SIDEBOX_AMQP_URL has none")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	m.BuildInfo.WithLabelValues(version, commit).Set(1)

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on SIDEBOX_HTTP_ADDR: %w", err)
	}
	defer ln.Close() // Serve closes it too; this covers the early returns

	// sql.Open does not connect: a database that is down at start is retried by the
	// components and shows in /readyz, it does not stop the process.
	dsn, err := DSN(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return fmt.Errorf("open database %s: %w", redact.URL(cfg.DatabaseURL), err)
	}
	defer db.Close()
	pg.TunePool(db, pg.SidecarIdleConns(cfg.RelayWorkers*max(len(cfg.Outboxes), 1), cfg.InboxWorkers))
	// The relay's LISTEN connection: a direct one when given, since notifications do
	// not pass a transaction pooler.
	listenDSN := dsn
	if cfg.ListenDatabaseURL != "" {
		if listenDSN, err = DSN(cfg.ListenDatabaseURL); err != nil {
			return err
		}
	}

	hs := health.New(reg, log)
	pubs, con := s.brokers(m)
	comps, relayRuns, err := s.components(db, listenDSN, pubs, con, hs, reg)
	if err != nil {
		return err
	}
	brokers := slices.DeleteFunc(append(pubs, con), func(b *broker.Broker) bool { return b == nil })
	broker.Join(brokers...)
	hs.Add("postgres", health.Cached(pingGauge(health.Ping(db, time.Second), m, relayRuns), 2*time.Second))
	hs.Add("rabbitmq", brokersReady(brokers))
	sampled := status.SamplerConfig{Interval: cfg.StatusInterval}
	if s.withRelay {
		sampled.Outboxes = cfg.Outboxes
	}
	if s.withInbox {
		sampled.Inbox = cfg.Inbox
	}
	sampler := status.NewSampler(db, sampled, log, m)

	// The broker connections and the HTTP server outlive the components: batches in
	// flight at the signal still need their confirms, and probes and scrapes keep
	// working during the drain.
	infra, stopInfra := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInfra()
	var infraWG sync.WaitGroup
	for _, b := range brokers {
		infraWG.Go(func() { b.Run(infra) })
	}
	httpErr := make(chan error, 1)
	infraWG.Go(func() {
		if err := hs.Serve(infra, ln); err != nil {
			httpErr <- err
		}
	})

	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	failed := make(chan error, len(comps))
	var wg sync.WaitGroup
	for _, c := range comps {
		wg.Go(func() {
			err := c.run(work)
			switch {
			case err != nil:
				failed <- fmt.Errorf("%s: %w", c.name, err)
			case work.Err() == nil:
				failed <- fmt.Errorf("%s stopped unexpectedly", c.name)
			}
		})
	}
	wg.Go(func() { sampler.Run(work) })
	log.Info("sidebox started", zap.String("http_addr", ln.Addr().String()))

	var fatal error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining", zap.String("reason", context.Cause(ctx).Error()), zap.Duration("timeout", cfg.ShutdownTimeout))
	case fatal = <-failed:
	case fatal = <-httpErr:
	}
	hs.Drain()
	stopWork()
	for _, b := range brokers {
		b.Drain()
	}

	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	timeout := time.NewTimer(cfg.ShutdownTimeout)
	defer timeout.Stop()
	select {
	case <-drained:
	case <-timeout.C:
		return errors.Join(fatal, fmt.Errorf("drain did not finish within SIDEBOX_SHUTDOWN_TIMEOUT (%s)", cfg.ShutdownTimeout))
	case <-s.forced:
		return errors.Join(fatal, errors.New("second signal: stopped without finishing the drain"))
	}
	stopInfra()
	infraWG.Wait()
	close(failed)
	for err := range failed {
		fatal = errors.Join(fatal, err)
	}
	if fatal != nil {
		return fatal
	}
	log.Info("drained; exiting")
	return nil
}

// components builds the relay and the inbox consumer and purger, as configured, and
// registers their readiness checks. They use the process's connections pub and con and
// its registry reg. relayRuns reports whether the relay runs.
func (s *sidecar) components(db *sql.DB, listenDSN string, pubs []*broker.Broker, con *broker.Broker, hs *health.Server, reg prometheus.Registerer) (comps []component, relayRuns func() bool, err error) {
	cfg, log := s.cfg, s.log
	relayRuns = func() bool { return false }
	if s.withRelay {
		var err error
		if comps, relayRuns, err = s.relays(db, listenDSN, pubs, hs, reg); err != nil {
			return nil, nil, err
		}
	}
	if s.withInbox {
		c, err := inbox.NewConsumer(db, cfg.ConsumerConfig(), inbox.WithConnection(con), inbox.WithLogger(log), inbox.WithRegisterer(reg), inbox.WithTracerProvider(s.tp))
		if err != nil {
			return nil, nil, config.FromComponent(err)
		}
		p, err := inbox.NewPurger(db, cfg.PurgerConfig(), inbox.WithLogger(log), inbox.WithRegisterer(reg))
		if err != nil {
			return nil, nil, config.FromComponent(err)
		}
		gate := &tableGate{db: db, table: cfg.Inbox, kind: "inbox", log: log}
		hs.Add("inbox", gate.checkReason(c.NotReadyReason))
		comps = append(comps, component{"inbox", func(ctx context.Context) error {
			if !gate.wait(ctx) {
				return nil
			}
			purged := make(chan error, 1)
			go func() { purged <- p.Run(ctx) }()
			err := c.Run(ctx)
			if perr := <-purged; perr != nil {
				err = errors.Join(err, fmt.Errorf("purger: %w", perr))
			}
			return err
		}})
	}
	return comps, relayRuns, nil
}

// pingGauge makes the database readiness check keep sidebox_up{postgres} current,
// except while the relay runs: the relay keeps it then, from its own claims.
func pingGauge(ping health.Check, m *metrics.Metrics, relayRuns func() bool) health.Check {
	up := m.Up.WithLabelValues(metrics.DependencyPostgres)
	return func(ctx context.Context) error {
		err := ping(ctx)
		if relayRuns() {
			return err
		}
		if err != nil {
			up.Set(0)
		} else {
			up.Set(1)
		}
		return err
	}
}

// brokers returns the AMQP connections of the components that run: one that
// publishes, for the relay, and one that consumes, for the inbox consumer (nil when
// the component does not run). They are separate because RabbitMQ, during a memory or
// disk alarm, stops reading from connections that publish: a shared one would stall
// the inbox's acknowledgements, and with them the draining that relieves the alarm.
func (s *sidecar) brokers(m *metrics.Metrics) (pubs []*broker.Broker, con *broker.Broker) {
	cfg := s.cfg
	if s.withRelay {
		pubs = publishBrokers(s.mode, cfg, s.log, m)
	}
	if s.withInbox {
		con = broker.New(cfg.AMQPURLs, broker.Config{Name: brokerName(s.mode, broker.RoleConsume), Role: broker.RoleConsume, TLS: cfg.AMQPTLS}, s.log, m)
	}
	return pubs, con
}

// brokersReady is the rabbitmq readiness check: every connection is open. A
// connection that RabbitMQ blocks during an alarm is open and ready: the service's
// writes go on into the outbox; the block shows in the log and in
// sidebox_rabbitmq_blocked.
func brokersReady(bs []*broker.Broker) health.Check {
	return func(context.Context) error {
		var problems []string
		for _, b := range bs {
			if p := b.Problem(); p != "" {
				if len(bs) > 1 {
					p = b.Role() + " connection " + p
				}
				problems = append(problems, p)
			}
		}
		if len(problems) == 0 {
			return nil
		}
		return errors.New(strings.Join(problems, "; "))
	}
}

// brokerName is the connection name shown in RabbitMQ's management UI:
// "sidebox <command>@<host> <role>".
func brokerName(md Mode, role string) string {
	name := "sidebox " + string(md)
	if host, err := os.Hostname(); err == nil {
		name += "@" + host
	}
	return name + " " + role
}

// tableGate holds a component back until its table exists, so that the sidecar may
// start before `sidebox migrate up` has run (say, a migration job running alongside
// the new pods); readiness says what it waits for meanwhile.
type tableGate struct {
	db    *sql.DB
	table pg.Table
	kind  string
	log   *zap.Logger

	missing atomic.Bool // the last look found no table
	open    atomic.Bool // the table exists; the component runs
}

// wait returns true once the table exists, false when ctx is done first.
func (g *tableGate) wait(ctx context.Context) bool {
	poll := backoff.Poll()
	warned, failed := false, false
	for attempt := 1; ; attempt++ {
		ok, err := pg.TableExists(ctx, g.db, g.table)
		switch {
		case err == nil && ok:
			g.open.Store(true)
			if warned {
				g.log.Info(g.kind+" table exists now; starting", zap.String("table", g.table.String()))
			}
			return true
		case err == nil:
			g.missing.Store(true)
			if !warned {
				g.log.Warn(g.kind+" table does not exist; waiting for it (run `sidebox migrate up`)", zap.String("table", g.table.String()))
				warned = true
			}
		default:
			// The database is down or refuses the connection: the postgres readiness
			// check reports it; the log says it once, so that an idle sidecar is
			// never silent about why.
			level := zap.DebugLevel
			if !failed {
				level, failed = zap.WarnLevel, true
			}
			g.log.Log(level, "cannot look up "+g.kind+" table; retrying", zap.String("table", g.table.String()), zap.String("error", redact.Text(err.Error())))
		}
		if !poll.Sleep(ctx, attempt) {
			return false
		}
	}
}

// check reports the gate's state until it opens, then the component's readiness.
func (g *tableGate) check(ready func() bool, problem string) health.Check {
	return func(context.Context) error {
		switch {
		case g.open.Load():
			if !ready() {
				return errors.New(problem)
			}
			return nil
		case g.missing.Load():
			return fmt.Errorf("%s table %s does not exist; run `sidebox migrate up`", g.kind, g.table)
		default:
			return fmt.Errorf("looking up %s table %s", g.kind, g.table)
		}
	}
}
