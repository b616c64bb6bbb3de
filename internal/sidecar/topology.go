package sidecar

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/config"
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
