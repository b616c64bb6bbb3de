package cli

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sidebox/sidebox/inbox"
	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
	"github.com/sidebox/sidebox/outbox"
)

// connectTimeout bounds the first connection of the one-shot commands (migrate, status):
// an unreachable database fails them instead of hanging.
const connectTimeout = defaultConnectTimeout

// schema is one of the two tables sidebox migrates.
type schema struct {
	kind  string // "outbox" or "inbox": the snippet directory
	table pg.Table
	ms    pg.Migrations
}

func (s schema) String() string { return s.kind + " table " + s.table.String() }

// schemas returns the tables in the order they are created; down goes in reverse.
func schemas(cfg *config.Config) []schema {
	return []schema{
		{"outbox", cfg.Outbox, outbox.Migrations()},
		{"inbox", cfg.Inbox, inbox.Migrations()},
	}
}

func migrateCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("migrate: want a subcommand: up, down or print")
	}
	sub, rest := args[0], args[1:]
	fs := newFlags("migrate " + sub)
	switch sub {
	case "print":
		down := fs.Bool("down", false, "print the down snippets, in the order to run them")
		if err := noArgs(fs, rest); err != nil {
			return err
		}
		return printSnippets(stdout, *down)
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
	cfg, err := loadConfig(config.Database | config.Outbox | config.Inbox)
	if err != nil {
		return err
	}
	db, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, s := range schemas(cfg) {
		applied, err := s.ms.Up(ctx, db, s.table)
		for _, a := range applied {
			fmt.Fprintf(stdout, "%s: applied %04d_%s\n", s, a.Version, a.Name)
		}
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		if len(applied) == 0 {
			fmt.Fprintf(stdout, "%s: up to date\n", s)
		}
	}
	return nil
}

func migrateDown(ctx context.Context, stdout io.Writer, force bool) error {
	cfg, err := loadConfig(config.Database | config.Outbox | config.Inbox)
	if err != nil {
		return err
	}
	db, err := connect(ctx, cfg.DatabaseURL)
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
	for i := len(all) - 1; i >= 0; i-- {
		s := all[i]
		undone, err := s.ms.Down(ctx, db, s.table)
		for _, a := range undone {
			fmt.Fprintf(stdout, "%s: rolled back %04d_%s\n", s, a.Version, a.Name)
		}
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		if len(undone) == 0 {
			fmt.Fprintf(stdout, "%s: nothing to roll back\n", s)
		}
	}
	return nil
}

// refuseDown returns an error while the outbox holds unpublished rows (pending,
// retrying or dead) or the inbox rows not yet processed: dropping the tables would lose
// those messages, which exist nowhere else.
func refuseDown(ctx context.Context, db *sql.DB, cfg *config.Config) error {
	var held []string
	for _, c := range []struct {
		t     pg.Table
		where string
		what  string
	}{
		{cfg.Outbox, "true", "unpublished"},
		{cfg.Inbox, "processed_at IS NULL", "unprocessed"},
	} {
		ok, err := pg.TableExists(ctx, db, c.t)
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		if !ok {
			continue
		}
		var n int64
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+c.t.String()+` WHERE `+c.where).Scan(&n); err != nil {
			return fmt.Errorf("migrate down: count rows of %s: %w", c.t, err)
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

// printSnippets writes the shipped SQL files, each under a comment naming it: the up
// files in the order to apply them, or the down files in the order to run them.
func printSnippets(w io.Writer, down bool) error {
	type file struct{ name, sql string }
	var files []file
	for _, s := range []struct {
		dir string
		ms  pg.Migrations
	}{{"outbox", outbox.Migrations()}, {"inbox", inbox.Migrations()}} {
		for _, m := range s.ms.Steps {
			if down {
				files = append(files, file{fmt.Sprintf("%s/migrations/%04d_%s.down.sql", s.dir, m.Version, m.Name), m.Down})
			} else {
				files = append(files, file{fmt.Sprintf("%s/migrations/%04d_%s.up.sql", s.dir, m.Version, m.Name), m.Up})
			}
		}
	}
	if down {
		for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
			files[i], files[j] = files[j], files[i]
		}
	}
	for i, f := range files {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "-- %s\n%s", f.name, f.sql)
		if !strings.HasSuffix(f.sql, "\n") {
			fmt.Fprintln(w)
		}
	}
	return nil
}

// connect opens the database and checks it answers within connectTimeout.
func connect(ctx context.Context, dsn string) (*sql.DB, error) {
	bounded, err := withConnectTimeout(dsn)
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
