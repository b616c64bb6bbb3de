package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sidebox/sidebox/internal/status"
)

// defaultWatch is the refresh period of `sidebox status --watch` without an interval.
const defaultWatch = 2 * time.Second

// watchFlag is --watch with an optional interval: --watch, --watch=5s, or --watch 5s
// (the interval then comes as the next argument; see takeArgs).
type watchFlag struct {
	on    bool
	every time.Duration
}

func (f *watchFlag) String() string {
	if f == nil || !f.on {
		return ""
	}
	return f.every.String()
}

// IsBoolFlag lets --watch stand alone.
func (f *watchFlag) IsBoolFlag() bool { return true }

func (f *watchFlag) Set(s string) error {
	f.on = true
	if s == "true" {
		return nil
	}
	if s == "false" {
		f.on = false
		return nil
	}
	return f.setInterval(s)
}

func (f *watchFlag) setInterval(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < 100*time.Millisecond {
		return fmt.Errorf("want an interval such as 1s, 5s or 1m (at least 100ms), got %q", s)
	}
	f.every = d
	return nil
}

// parseStatusFlags parses the flags of `sidebox status`. The flag package stops at
// the first argument that is no flag, so the interval of `--watch 5s` comes back as
// an argument: it is taken, and the flags after it are parsed in turn.
func parseStatusFlags(fs *flag.FlagSet, f *watchFlag, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.on && fs.NArg() > 0 {
		if _, err := time.ParseDuration(fs.Arg(0)); err == nil {
			if err := f.setInterval(fs.Arg(0)); err != nil {
				return usagef("status: --watch: %v", err)
			}
			if err := parseFlags(fs, fs.Args()[1:]); err != nil {
				return err
			}
		}
	}
	if fs.NArg() > 0 {
		return usagef("status: unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// watchStatus runs once every interval until ctx is done (SIGINT, SIGTERM), then
// returns nil. On a terminal each report replaces the previous one (the screen is
// cleared with ANSI escapes); otherwise reports follow each other, JSON reports one a
// line, others under a line with the time. A failed refresh is shown, not fatal.
func watchStatus(ctx context.Context, w io.Writer, every time.Duration, asJSON bool, once func() error) error {
	tty := isTerminal(w)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		switch {
		case tty:
			fmt.Fprint(w, "\x1b[H\x1b[2J")
			fmt.Fprintf(w, "sidebox status, every %s (Ctrl-C to stop)    %s\n\n", every, time.Now().Format(time.TimeOnly))
		case !asJSON:
			fmt.Fprintf(w, "--- %s\n", time.Now().UTC().Format(time.RFC3339))
		}
		if err := once(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if asJSON {
				return err // a script reading JSON lines gets no half-lines; it sees exit 1
			}
			fmt.Fprintf(w, "%v\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printDetail writes the relay and error lines of an outbox table's section.
func printDetail(b *strings.Builder, row func(string, any), d *status.Detail) {
	if d == nil {
		return
	}
	switch {
	case d.Relays == nil:
		row("relays", "unknown (no heartbeat table; run `sidebox migrate up`)")
	default:
		row("relays (last min)", *d.Relays)
		rate := float64(*d.PublishedLastMinute) / 60
		row("published (last min)", fmt.Sprintf("%d (%.1f/s)", *d.PublishedLastMinute, rate))
	}
	if d.OldestRetryingError != nil {
		fmt.Fprintf(b, "  %-20s %s\n", "oldest retrying error", oneLine(*d.OldestRetryingError))
	}
	if d.OldestDeadError != nil {
		fmt.Fprintf(b, "  %-20s %s\n", "oldest dead error", oneLine(*d.OldestDeadError))
	}
}

// oneLine keeps an error on one line of at most 200 characters.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	if s == "" {
		return "(none recorded)"
	}
	return s
}
