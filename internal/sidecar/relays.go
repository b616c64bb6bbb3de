package sidecar

import (
	"context"
	"database/sql"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidebox/sidebox/internal/broker"
	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/health"
	"github.com/sidebox/sidebox/relay"
)

// relays builds one relay per outbox table (SIDEBOX_OUTBOX_TABLE may list several), each
// held back by its own table gate, with a readiness check each: "relay" for a single
// table, "relay <table>" for several. relayRuns reports whether any of them runs.
//
// The relays share the database pool and the publishing connection, and each takes a
// bounded share of them: at most Workers batches in flight, each one transaction (one
// pooled connection) and one AMQP channel with at most BatchSize unconfirmed messages.
// The pool has no cap on open connections, so a flooded table never makes another
// table's relay wait for a connection, and its publishes queue behind at most the
// flooded relay's window on the shared connection.
func (s *sidecar) relays(db *sql.DB, listenDSN string, pub *broker.Broker, hs *health.Server, reg prometheus.Registerer) (comps []component, relayRuns func() bool, err error) {
	cfg, log := s.cfg, s.log
	var gates []*tableGate
	for _, t := range cfg.Outboxes {
		r, err := relay.New(db, cfg.RelayConfigFor(t, listenDSN), relay.WithConnection(pub), relay.WithLogger(log), relay.WithRegisterer(reg))
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
		comps = append(comps, component{name, func(ctx context.Context) error {
			if !gate.wait(ctx) {
				return nil
			}
			return r.Run(ctx)
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
