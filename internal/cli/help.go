package cli

// usageText is what `sidebox help` prints, and what follows a usage error.
const usageText = `Usage: sidebox <command> [flags]

Commands:
  run                 the sidecar: the outbox relay, plus the inbox consumer when
                      SIDEBOX_INBOX_QUEUE is set
  relay               only the outbox relay (outbox table -> RabbitMQ)
  inbox               only the inbox consumer (RabbitMQ queue -> inbox table)
  migrate up          apply the pending migrations of the outbox and inbox tables
  migrate down [--force]
                      roll back every migration, newest first; refused while the
                      outbox or the inbox holds messages, unless --force
  migrate print [--down]
                      print the SQL snippets (up, or down with --down)
  status [--json] [--watch [interval]]
                      per table: backlog, retrying, dead and blocked keys of the
                      outbox, relays seen and rows published in the last minute, and
                      the inbox's unprocessed and dead rows; --watch refreshes
  dead list [--inbox] [--json] [--limit N] [SELECTOR]
                      dead rows of the outbox (of the inbox with --inbox), in seq
                      order: id, key, exchange, routing key, attempts, last error, age
  dead retry [--inbox] [--dry-run] SELECTOR
                      make the selected dead rows due again; each keeps its place
                      (seq) in its key's order
  dead discard [--inbox] [--dry-run] SELECTOR
                      drop the selected dead rows (the inbox keeps them as processed,
                      for deduplication); the rows behind them in their keys move on
                      SELECTOR: --id ID, --key K (repeatable), --older-than D (ANDed),
                      or --all; retry and discard require one. --consumer C (inbox)
  replay --since T [--dry-run]
                      publish again the outbox rows kept by SIDEBOX_OUTBOX_RETENTION
                      (or SIDEBOX_OUTBOX_PARTITIONS=daily) and published since T
                      (RFC 3339, or a duration ago: 90m), with
                      their ids (inboxes deduplicate them) and in their order
  inject              the Kubernetes admission webhook that adds the sidecar to pods
  version             print the version, commit, Go version and build date
  help [command]      print this help, or a command's (also: sidebox <command> -h)

Configuration is read from SIDEBOX_* environment variables; see docs/configuration.md.
Exit codes: 0 clean shutdown, 1 fatal error, 2 bad configuration or usage.
`
