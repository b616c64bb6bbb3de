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
  status [--json]     backlog, retrying, dead and blocked keys of the outbox, and the
                      inbox's unprocessed and dead rows
  inject              the Kubernetes admission webhook that adds the sidecar to pods
  version             print the version, commit, Go version and build date
  help [command]      print this help, or a command's (also: sidebox <command> -h)

Configuration is read from SIDEBOX_* environment variables; see docs/configuration.md.
Exit codes: 0 clean shutdown, 1 fatal error, 2 bad configuration or usage.
`
