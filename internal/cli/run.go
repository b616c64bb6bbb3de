package cli

import (
	"context"
	"errors"
	"io"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/logging"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/internal/sidecar"
)

// daemon runs one of the long-running commands (run, relay, inbox) until a signal,
// then drains; internal/sidecar does the work.
func daemon(ctx context.Context, md sidecar.Mode, args []string, stderr io.Writer) error {
	if err := noArgs(newFlags(string(md)), args); err != nil {
		return err
	}
	cfg := config.Load()
	if err := cfg.Check(sidecar.Groups(md, cfg)); err != nil {
		return err
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err // unreachable after Check(config.Log)
	}
	defer func() { _ = log.Sync() }()
	setMemoryLimit(log, memlimit.FromCgroup)

	version, commit := buildVersion()
	err = sidecar.Run(ctx, md, cfg, log, sidecar.Build{Version: version, Commit: commit}, forcedChan(ctx))
	var bad *config.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &bad):
		return err // a component refused its configuration: exit 2, like Check's errors
	default:
		log.Error("sidebox stopped on a fatal error", zap.String("error", redact.Text(err.Error())))
		return &loggedError{err}
	}
}
