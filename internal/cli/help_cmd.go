package cli

import (
	"flag"
	"fmt"
	"strings"
)

// helpError asks Main to print the help of one command on stdout and exit 0. It
// matches flag.ErrHelp.
type helpError struct{ text string }

func (e *helpError) Error() string        { return "help requested" }
func (e *helpError) Is(target error) bool { return target == flag.ErrHelp }

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// commandHelp is each command's usage line and what it does; the flags are added from
// its flag set.
var commandHelp = map[string]string{
	"run": `Usage: sidebox run

The sidecar: the outbox relay, plus the inbox consumer when SIDEBOX_INBOX_QUEUE is set.
Needs SIDEBOX_DATABASE_URL and SIDEBOX_AMQP_URL. Runs until SIGTERM or SIGINT, then
drains and exits 0.
`,
	"relay": `Usage: sidebox relay

Only the outbox relay: publishes the outbox table's rows to RabbitMQ with publisher
confirms and deletes them once confirmed. Needs SIDEBOX_DATABASE_URL and
SIDEBOX_AMQP_URL; SIDEBOX_OUTBOX_DECLARE and SIDEBOX_OUTBOX_BINDINGS declare the
exchanges and queues it publishes to.
`,
	"inbox": `Usage: sidebox inbox

Only the inbox consumer: stores the deliveries of SIDEBOX_INBOX_QUEUE in the inbox
table, deduplicated by message id, and acknowledges them once stored. Needs
SIDEBOX_DATABASE_URL, SIDEBOX_AMQP_URL and SIDEBOX_INBOX_QUEUE.
`,
	"migrate": `Usage: sidebox migrate up | down [--force] | print [--down]

  up      apply the pending migrations of the outbox and inbox tables; tables and
          indexes another tool applied from the printed SQL are recognised and recorded
  down    roll back every migration, newest first; refused while the tables hold
          messages, unless --force
  print   print the SQL snippet files (up, or down with --down), for your own
          migration tool

up and down need SIDEBOX_DATABASE_URL; print needs nothing. With
SIDEBOX_OUTBOX_PARTITIONS=daily all three use the outbox partitioned by day
(outbox/migrations/partitioned).
`,
	"migrate up": `Usage: sidebox migrate up

Applies the pending migrations of the outbox table (SIDEBOX_OUTBOX_TABLE) and the inbox
table (SIDEBOX_INBOX_TABLE), each in its own transaction with its record in
sidebox_migrations. Safe to run again, and after your own tool applied the printed SQL.
With SIDEBOX_OUTBOX_PARTITIONS=daily the outbox is made partitioned by day; an outbox
of the other layout is refused, not converted.
`,
	"migrate down": `Usage: sidebox migrate down [--force]

Rolls back every migration of both tables, newest first. Refused while the outbox holds
unpublished rows or the inbox unprocessed ones, unless --force.
`,
	"migrate print": `Usage: sidebox migrate print [--down]

Prints the SQL snippet files with every name made for the configured tables
(SIDEBOX_OUTBOX_TABLE, SIDEBOX_INBOX_TABLE), as migrate up makes them: up files in the
order to apply them (or the down files, in the order to run them), the partitioned
outbox's with SIDEBOX_OUTBOX_PARTITIONS=daily. Needs no database.
`,
	"status": `Usage: sidebox status [--json]

The outbox's pending, retrying and dead rows, blocked keys and oldest ages, why the
oldest failed rows failed, and the inbox's unprocessed and dead rows. Needs
SIDEBOX_DATABASE_URL.
`,
	"inject": `Usage: sidebox inject

The Kubernetes admission webhook that adds the sidecar to pods (SIDEBOX_INJECT_*).
`,
	"version": `Usage: sidebox version

Prints the version, commit, Go version and build date, one field a line.
`,
}

// helpFor returns the help of the command fs parses, with its flags.
func helpFor(fs *flag.FlagSet) error {
	text, ok := commandHelp[fs.Name()]
	if !ok {
		return &helpError{usageText}
	}
	var flags strings.Builder
	fs.SetOutput(&flags)
	fs.PrintDefaults()
	fs.SetOutput(nil)
	if flags.Len() > 0 {
		text += "\nFlags:\n" + flags.String()
	}
	return &helpError{text + "\n" + configHint}
}

// configHint ends every command's help.
var configHint = fmt.Sprintf("Configuration: SIDEBOX_* environment variables (docs/configuration.md).\nExit codes: %d ok, %d fatal error, %d bad configuration or usage.\n", ExitOK, ExitFatal, ExitConfig)
