package sidecar

import (
	"context"
	"database/sql"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/health"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/relay"
)

// relays builds one relay per outbox table (SIDEBOX_OUTBOX_TABLE may list several), each
// held back by its own table gate, with a readiness check each: "relay" for a single
// table, "relay <table>" for several. relayRuns reports whether any of them runs.
//
// The relays share the database pool, and each takes a bounded share of it: at most
// Workers batches in flight, each one transaction (one pooled connection). The pool
// has no cap on open connections, so a flooded table never makes another table's
// relay wait for a connection. Each relay publishes on its own connection (pubs[i],
// see publishBrokers), at most Workers channels with BatchSize unconfirmed messages
// each: RabbitMQ's flow control throttles a connection as a whole, and a shared one
// made a quiet table's message wait behind a flooded table's window.
func (s *sidecar) relays(db *sql.DB, listenDSN string, pubs []*broker.Broker, hs *health.Server, reg prometheus.Registerer) (comps []component, relayRuns func() bool, err error) {
	cfg, log := s.cfg, s.log
	var gates []*tableGate
	for i, t := range cfg.Outboxes {
		r, err := relay.New(db, cfg.RelayConfigFor(t, listenDSN), relay.WithConnection(pubs[i]), relay.WithLogger(log), relay.WithRegisterer(reg), relay.WithTracerProvider(s.tp))
		if err != nil {
			return nil, nil, config.FromComponent(err)
		}
		gate := &tableGate{db: db, table: t, kind: "outbox", log: log}
		gates = append(gates, gate)
		name := "relay"
		if len(cfg.Outboxes) > 1 {
			name += " " + t.String()
		}
		hs.Add(name, gate.check(r.Ready, "relay not ready"))
		pub := pubs[i]
		comps = append(comps, component{name, func(ctx context.Context) error {
			// SIDEBOX_OUTBOX_DECLARE/BINDINGS: the same for every table (declaring is idempotent).
			if err := declareTopology(ctx, pub, cfg.Topology, log); err != nil {
				return err
			}
			if !gate.wait(ctx) {
				return nil
			}
			// A table of the other layout than SIDEBOX_OUTBOX_PARTITIONS: exit 2.
			return config.FromComponent(r.Run(ctx))
		}})
	}
	relayRuns = func() bool {
		for _, g := range gates {
			if g.open.Load() {
				return true
			}
		}
		return false
	}
	return comps, relayRuns, nil
}

// publishBrokers returns one publishing connection per outbox table, named
// "sidebox <command>@<host> publish" for a single table and with the table's name
// appended for several.
func publishBrokers(md Mode, cfg *config.Config, log *zap.Logger, m *metrics.Metrics) []*broker.Broker {
	var out []*broker.Broker
	for _, t := range cfg.Outboxes {
		name := brokerName(md, broker.RolePublish)
		if len(cfg.Outboxes) > 1 {
			name += " " + t.String()
		}
		out = append(out, broker.New(cfg.AMQPURLs, broker.Config{Name: name, Role: broker.RolePublish, TLS: cfg.AMQPTLS}, log, m))
	}
	return out
}
