// Package cli is the sidebox command line: it parses the command, checks the
// configuration the command needs, handles signals and turns the outcome into an exit
// code (0 clean, 1 fatal, 2 configuration or usage). Each command has its own file;
// the daemon behind run, relay and inbox is internal/sidecar.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	_ "github.com/lib/pq" // the "postgres" database/sql driver

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/internal/sidecar"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFatal  = 1
	ExitConfig = 2
)

// usageError is a bad command line: exit 2 with the usage on stderr.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// loggedError is a fatal error the command has already logged; Main only exits 1.
type loggedError struct{ err error }

func (e *loggedError) Error() string { return e.err.Error() }
func (e *loggedError) Unwrap() error { return e.err }

// Main runs sidebox with args (without the program name) and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signalContext()
	defer stop()
	err := dispatch(ctx, args, stdout, stderr)
	var help *helpError
	switch {
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.text)
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usageText)
		return ExitOK
	}
	return exitCode(err, stderr)
}

// exitCode prints err once, redacted, and maps it to the exit code.
func exitCode(err error, stderr io.Writer) int {
	var (
		usage  *usageError
		cfgErr *config.Error
		logged *loggedError
	)
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "sidebox: %s\n\n%s", redact.Text(usage.msg), usageText)
		return ExitConfig
	case errors.As(err, &cfgErr):
		fmt.Fprintln(stderr, "sidebox: invalid configuration:")
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintln(stderr, "  "+redact.Text(line))
		}
		return ExitConfig
	case errors.As(err, &logged):
		return ExitFatal
	default:
		fmt.Fprintln(stderr, "sidebox: "+redact.Text(err.Error()))
		return ExitFatal
	}
}

// signals is what Main hands the commands: ctx is cancelled at the first SIGTERM or
// SIGINT; forced is closed at the second, to give up on draining.
type signals struct {
	forced <-chan struct{}
}

type signalsKey struct{}

// signalContext returns a context cancelled by SIGTERM/SIGINT and carrying the channel
// closed at a second signal.
func signalContext() (context.Context, func()) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	forced := make(chan struct{})
	ctx, cancel := context.WithCancelCause(context.Background())
	ctx = context.WithValue(ctx, signalsKey{}, signals{forced: forced})
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			cancel(fmt.Errorf("received %v", s))
		case <-done:
			return
		}
		select {
		case <-ch:
			close(forced)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// forcedChan returns the channel closed at a second signal (never, outside Main).
func forcedChan(ctx context.Context) <-chan struct{} {
	if s, ok := ctx.Value(signalsKey{}).(signals); ok {
		return s.forced
	}
	return nil
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			// sidebox help migrate [up]
			return helpFor(newFlags(strings.Join(rest, " ")))
		}
		return flag.ErrHelp
	case "version", "-version", "--version":
		if err := noArgs(newFlags("version"), rest); err != nil {
			return err
		}
		return printVersion(stdout)
	case "run":
		return daemon(ctx, sidecar.ModeRun, rest, stderr)
	case "relay":
		return daemon(ctx, sidecar.ModeRelay, rest, stderr)
	case "inbox":
		return daemon(ctx, sidecar.ModeInbox, rest, stderr)
	case "migrate":
		return migrateCmd(ctx, rest, stdout)
	case "status":
		return statusCmd(ctx, rest, stdout)
	case "dead":
		return deadCmd(ctx, rest, stdout)
	case "replay":
		return replayCmd(ctx, rest, stdout)
	case "inject":
		return injectCmd(ctx, rest, stderr)
	default:
		return usagef("unknown command %q", cmd)
	}
}

// newFlags returns a flag set that reports errors to the caller instead of printing.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// noArgs parses flags and refuses positional arguments.
func noArgs(fs *flag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		return helpFor(fs)
	default:
		return usagef("%s: %v", fs.Name(), err)
	}
}

// loadConfig reads the environment and checks the groups a command uses.
func loadConfig(groups config.Group) (*config.Config, error) {
	cfg := config.Load()
	if err := cfg.Check(groups); err != nil {
		return nil, err
	}
	return cfg, nil
}
