package sidecar

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/health"
	"github.com/sidebox/sidebox/internal/topology"
)

// declareTopology declares the outbox's exchanges, queues and bindings before the relay
// starts. A refusal by the broker (an exchange of another definition) is a
// configuration error: exit code 2, naming the variable. Cancelled, it returns nil.
func declareTopology(ctx context.Context, b topology.Channeler, t topology.Topology, log *zap.Logger) error {
	err := topology.Declare(ctx, b, t, log)
	var refused *topology.Error
	switch {
	case errors.As(err, &refused):
		return &config.Error{Var: refused.Var, Problem: refused.Problem}
	case ctx.Err() != nil:
		return nil
	}
	return err
}

// checkReason is check for a component that says why it is not ready ("" when it is).
func (g *tableGate) checkReason(reason func() string) health.Check {
	before := g.check(func() bool { return true }, "")
	return func(ctx context.Context) error {
		if !g.open.Load() {
			return before(ctx)
		}
		if r := reason(); r != "" {
			return errors.New(r)
		}
		return nil
	}
}
