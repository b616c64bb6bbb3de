package cli

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/internal/sidecar"
	"github.com/sidebox/sidebox/outbox"
)

// connectTimeout bounds the first connection of the one-shot commands (migrate, status):
// an unreachable database fails them instead of hanging.
const connectTimeout = sidecar.ConnectTimeout

// schema is one of the two tables sidebox migrates.
type schema struct {
	table pg.Table
	ms    pg.Migrations // ms.Base, "outbox" or "inbox", names the kind of table
	// layout is the outbox table's (SIDEBOX_OUTBOX_PARTITIONS); "" for the inbox.
	layout outboxdb.Partitioning
}

func (s schema) String() string { return s.ms.Base + " table " + s.table.String() }

// schemas returns the tables in the order they are created, every outbox table then
// every inbox table as listed; down goes in reverse.
func schemas(cfg *config.Config) []schema {
	layout, _ := cfg.OutboxPartitioning() // checked
	var out []schema
	for _, t := range cfg.Outboxes {
		out = append(out, schema{t, outboxMigrations(layout), layout})
	}
	for _, t := range cfg.Inboxes {
		out = append(out, schema{t, inboxMigrations(), ""})
	}
	return out
}

// outboxMigrations and inboxMigrations are the embedded migrations of the two tables:
// the outbox's of the given layout.
func outboxMigrations(layout outboxdb.Partitioning) pg.Migrations {
	if layout == outboxdb.Daily {
		return mustLoad(outboxdb.PartitionedMigrations(outbox.PartitionedMigrationFiles()))
	}
	return mustLoad(outboxdb.Migrations(outbox.MigrationFiles()))
}
func inboxMigrations() pg.Migrations { return mustLoad(inboxdb.Migrations(inbox.MigrationFiles())) }

// outboxSnippetDir is where the outbox snippets of a layout ship.
func outboxSnippetDir(layout outboxdb.Partitioning) string {
	if layout == outboxdb.Daily {
		return "outbox/migrations/partitioned"
	}
	return "outbox/migrations"
}

func mustLoad(ms pg.Migrations, err error) pg.Migrations {
	if err != nil {
		panic(fmt.Sprintf("embedded migrations are broken: %v", err)) // a build defect, caught by tests
	}
	return ms
}

func migrateCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("migrate: want a subcommand: up, down or print")
	}
	sub, rest := args[0], args[1:]
	if isHelp(sub) {
		return helpFor(newFlags("migrate"))
	}
	fs := newFlags("migrate " + sub)
	switch sub {
	case "print":
		down := fs.Bool("down", false, "print the down snippets, in the order to run them")
		if err := noArgs(fs, rest); err != nil {
			return err
		}
		cfg, err := loadConfig(config.Outbox | config.Inbox)
		if err != nil {
			return err
		}
		return printSnippets(stdout, cfg, *down)
	case "up":
		if err := noArgs(fs, rest); err != nil {
			return err
		}
		return migrateUp(ctx, stdout)
	case "down":
		force := fs.Bool("force", false, "roll back even though the tables hold messages")
		if err := noArgs(fs, rest); err != nil {
			return err
		}
		return migrateDown(ctx, stdout, *force)
	default:
		return usagef("migrate: unknown subcommand %q; want up, down or print", sub)
	}
}

func migrateUp(ctx context.Context, stdout io.Writer) error {
	cfg, db, err := connectConfigured(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	all := schemas(cfg)
	for _, s := range all {
		if s.layout == "" {
			continue
		}
		// A table of the other layout is refused before anything changes: sidebox
		// does not convert one into the other.
		if err := outboxdb.CheckLayout(ctx, db, s.table, s.layout); err != nil {
			return fmt.Errorf("migrate up refused: %w", err)
		}
		if err := s.ms.CheckFirst(ctx, db, s.table); err != nil {
			return fmt.Errorf("migrate up refused: %w", err)
		}
	}
	return migrateEach(ctx, stdout, db, all, "migrate up", "applied", "up to date", pg.Migrations.Up)
}

func migrateDown(ctx context.Context, stdout io.Writer, force bool) error {
	cfg, db, err := connectConfigured(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	if !force {
		if err := refuseDown(ctx, db, cfg); err != nil {
			return err
		}
	}
	all := schemas(cfg)
	for _, s := range all {
		if err := s.ms.CheckFirst(ctx, db, s.table); err != nil {
			return fmt.Errorf("migrate down refused: %w", err)
		}
	}
	slices.Reverse(all)
	return migrateEach(ctx, stdout, db, all, "migrate down", "rolled back", "nothing to roll back", pg.Migrations.Down)
}

// migrateEach runs step (pg.Migrations.Up or Down) on each table in turn and prints
// every migration it did, or none when a table had nothing to do.
func migrateEach(ctx context.Context, stdout io.Writer, db *sql.DB, all []schema, op, did, none string,
	step func(pg.Migrations, context.Context, *sql.DB, pg.Table) ([]pg.Applied, error)) error {
	for _, s := range all {
		done, err := step(s.ms, ctx, db, s.table)
		for _, a := range done {
			if a.Found {
				fmt.Fprintf(stdout, "%s: %04d_%s was there already (applied by another tool); recorded\n", s, a.Version, a.Name)
				continue
			}
			fmt.Fprintf(stdout, "%s: %s %04d_%s\n", s, did, a.Version, a.Name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if len(done) == 0 {
			fmt.Fprintf(stdout, "%s: %s\n", s, none)
		}
	}
	return nil
}

// refuseDown returns an error while the outbox holds unpublished rows (pending,
// retrying or dead) or the inbox rows not yet processed: dropping the tables would lose
// those messages, which exist nowhere else.
func refuseDown(ctx context.Context, db *sql.DB, cfg *config.Config) error {
	type check struct {
		t     pg.Table
		count func(context.Context, *sql.DB, pg.Table) (int64, error)
		what  string
	}
	var checks []check
	for _, t := range cfg.Outboxes {
		checks = append(checks, check{t, outboxdb.Held, "unpublished"})
	}
	for _, t := range cfg.Inboxes {
		checks = append(checks, check{t, inboxdb.Held, "unprocessed"})
	}
	var held []string
	for _, c := range checks {
		n, err := c.count(ctx, db, c.t)
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		if n > 0 {
			held = append(held, fmt.Sprintf("%s holds %d %s rows", c.t, n, c.what))
		}
	}
	if len(held) == 0 {
		return nil
	}
	return fmt.Errorf("migrate down refused: %s, which rolling back would drop; let the relay and the service drain them, or run `sidebox migrate down --force` to drop them anyway",
		strings.Join(held, " and "))
}

// printHeader opens the output of `migrate print`: how it coexists with `migrate up`.
const printHeader = `-- sidebox migrations, as shipped in outbox/migrations (outbox/migrations/partitioned
-- with SIDEBOX_OUTBOX_PARTITIONS=daily) and inbox/migrations, with every name made for
-- the configured tables (SIDEBOX_OUTBOX_TABLE and SIDEBOX_INBOX_TABLE; outbox and inbox
-- by default), as ` + "`sidebox migrate up`" + ` makes them. Apply them with any tool (psql -f,
-- Flyway, golang-migrate...). Every up statement is idempotent, and ` + "`sidebox migrate up`" + `
-- recognises tables and indexes already there: it records them in sidebox_migrations and
-- exits 0. So the order does not matter: your tool then ` + "`migrate up`" + `, or ` + "`migrate up`" + `
-- then your tool.
`

// printSnippets writes the shipped SQL of every configured table, made for its names as
// migrate up makes it, each file under a comment naming it: the up files in the order
// to apply them, or the down files in the order to run them. A table in a schema of its
// own gets its schema created and set as the search_path first, as migrate up does, and
// the search_path reset after it.
func printSnippets(w io.Writer, cfg *config.Config, down bool) error {
	all := schemas(cfg)
	if down {
		slices.Reverse(all)
	}
	fmt.Fprint(w, printHeader)
	for _, s := range all {
		dir := "inbox/migrations"
		if s.layout != "" {
			dir = outboxSnippetDir(s.layout)
		}
		steps := slices.Clone(s.ms.Steps)
		if down {
			slices.Reverse(steps)
		}
		if s.table.Schema != "" {
			fmt.Fprintf(w, "\n-- %s: its schema, where the names below resolve\n", s.table)
			if !down {
				fmt.Fprintf(w, "CREATE SCHEMA IF NOT EXISTS %s;\n", s.table.Schema)
			}
			fmt.Fprintf(w, "SET search_path TO %s;\n", s.table.Schema)
		}
		for _, m := range steps {
			ext, text := "up", m.Up
			if down {
				ext, text = "down", m.Down
			}
			fmt.Fprintf(w, "\n-- %s/%04d_%s.%s.sql, for %s\n%s", dir, m.Version, m.Name, ext, s.table, s.ms.Rewrite(text, s.table))
			if !strings.HasSuffix(text, "\n") {
				fmt.Fprintln(w)
			}
		}
		if s.table.Schema != "" {
			fmt.Fprintln(w, "\nRESET search_path;")
		}
	}
	return nil
}

// connectConfigured reads the configuration of the one-shot commands (database and
// both tables) and connects to the database.
func connectConfigured(ctx context.Context) (*config.Config, *sql.DB, error) {
	cfg, err := loadConfig(config.Database | config.Outbox | config.Inbox)
	if err != nil {
		return nil, nil, err
	}
	db, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	return cfg, db, nil
}

// connect opens the database and checks it answers within connectTimeout.
func connect(ctx context.Context, dsn string) (*sql.DB, error) {
	bounded, err := sidecar.DSN(dsn)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("postgres", bounded)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", redact.URL(dsn), err)
	}
	pctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		_ = db.Close()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("no answer within %s", connectTimeout)
		}
		return nil, fmt.Errorf("connect to database %s: %w", redact.URL(dsn), err)
	}
	return db, nil
}
