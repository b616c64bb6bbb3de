package cli

import (
	"context"
	"errors"
	"io"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/inject"
	"github.com/sidebox/sidebox/internal/logging"
	"github.com/sidebox/sidebox/internal/redact"
)

// injectCmd serves the admission webhook until a signal.
func injectCmd(ctx context.Context, args []string, stderr io.Writer) error {
	if err := noArgs(newFlags("inject"), args); err != nil {
		return err
	}
	cfg, err := loadConfig(config.Inject | config.Log)
	if err != nil {
		return err
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	version, commit := buildVersion()
	log.Info("starting sidebox admission webhook", zap.String("version", version), zap.String("commit", commit),
		zap.String("addr", cfg.InjectAddr), zap.String("image", cfg.InjectImage), zap.String("mode", cfg.InjectMode))

	err = inject.Serve(ctx, cfg.InjectConfig(), log)
	var bad *config.Error
	switch err = config.FromComponent(err); {
	case err == nil:
		log.Info("drained; exiting")
		return nil
	case errors.As(err, &bad):
		// A certificate that cannot be loaded, say: a configuration error too.
		return err
	default:
		log.Error("sidebox stopped on a fatal error", zap.String("error", redact.Text(err.Error())))
		return &loggedError{err}
	}
}
