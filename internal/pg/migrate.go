package pg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Migration is one numbered step of a table's schema, read from snippet files
// NNNN_description.up.sql and NNNN_description.down.sql.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// Migrations is the ordered migration set of one kind of table. Snippets are written for
// the table named Base ("outbox" or "inbox") and are rewritten for the configured table.
// Build it with LoadMigrations.
type Migrations struct {
	Base  string
	Steps []Migration

	derived *regexp.Regexp // a name derived from Base; see Rewrite
}

var snippetName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$`)

// LoadMigrations reads the snippet files in dir of fsys.
func LoadMigrations(fsys fs.FS, dir, base string) (Migrations, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return Migrations{}, fmt.Errorf("read migrations: %w", err)
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		m := snippetName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return Migrations{}, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		step := byVersion[v]
		if step == nil {
			step = &Migration{Version: v, Name: m[2]}
			byVersion[v] = step
		}
		if m[3] == "up" {
			step.Up = string(b)
		} else {
			step.Down = string(b)
		}
	}
	q := regexp.QuoteMeta(base)
	out := Migrations{Base: base, derived: regexp.MustCompile(`\b(sidebox_)?` + q + `\b|\b(sidebox_)?` + q + `_`)}
	for _, s := range byVersion {
		if s.Up == "" || s.Down == "" {
			return Migrations{}, fmt.Errorf("migration %04d_%s lacks its up or down file", s.Version, s.Name)
		}
		out.Steps = append(out.Steps, *s)
	}
	sort.Slice(out.Steps, func(i, j int) bool { return out.Steps[i].Version < out.Steps[j].Version })
	return out, nil
}

// Rewrite returns sql with every name derived from the base table name renamed for t:
// a word starting with the base name (outbox, outbox_pending_idx) gets t.Name in its
// place. The schema is handled by search_path, not by rewriting, except in the
// notification channel sidebox_<base>, which becomes t.Channel().
func (ms Migrations) Rewrite(sql string, t Table) string {
	if t.Name == ms.Base && t.Schema == "" {
		return sql
	}
	channel := "sidebox_" + ms.Base
	return ms.derived.ReplaceAllStringFunc(sql, func(m string) string {
		if m == channel {
			return t.Channel()
		}
		return strings.Replace(m, ms.Base, t.Name, 1)
	})
}

// Applied is one recorded migration. Found is true when its objects were there
// already (applied by another tool): the step was recorded, changing nothing.
type Applied struct {
	Version int
	Name    string
	Found   bool
}

const ledger = "sidebox_migrations"

// Up applies every migration of ms not yet recorded for table t, oldest first, each in
// its own transaction with its record. Concurrent callers are serialised by an advisory
// lock, so two sidecars starting together do not race. It returns the steps it applied.
func (ms Migrations) Up(ctx context.Context, db *sql.DB, t Table) ([]Applied, error) {
	var done []Applied
	for _, step := range ms.Steps {
		found := false
		applied, err := ms.inTx(ctx, db, t, func(tx *sql.Tx, have map[int]bool) (bool, error) {
			if have[step.Version] {
				return false, nil
			}
			up := ms.Rewrite(step.Up, t)
			var err error
			if found, err = alreadyThere(ctx, tx, up); err != nil {
				return false, err
			}
			if err := checkColumns(ctx, tx, up); err != nil {
				return false, fmt.Errorf("%s migration %04d_%s: %w", t, step.Version, step.Name, err)
			}
			if _, err := tx.ExecContext(ctx, up); err != nil {
				return false, fmt.Errorf("apply %s migration %04d_%s: %w", t, step.Version, step.Name, err)
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO `+ledgerFor(t)+` (tbl, version, name) VALUES ($1, $2, $3)`, t.String(), step.Version, step.Name)
			return true, err
		})
		if err != nil {
			return done, err
		}
		if applied {
			done = append(done, Applied{step.Version, step.Name, found})
		}
	}
	return done, nil
}

// Down rolls back every recorded migration of table t, newest first.
func (ms Migrations) Down(ctx context.Context, db *sql.DB, t Table) ([]Applied, error) {
	var done []Applied
	for i := len(ms.Steps) - 1; i >= 0; i-- {
		step := ms.Steps[i]
		applied, err := ms.inTx(ctx, db, t, func(tx *sql.Tx, have map[int]bool) (bool, error) {
			if !have[step.Version] {
				return false, nil
			}
			if _, err := tx.ExecContext(ctx, ms.Rewrite(step.Down, t)); err != nil {
				return false, fmt.Errorf("roll back %s migration %04d_%s: %w", t, step.Version, step.Name, err)
			}
			_, err := tx.ExecContext(ctx, `DELETE FROM `+ledgerFor(t)+` WHERE tbl = $1 AND version = $2`, t.String(), step.Version)
			return true, err
		})
		if err != nil {
			return done, err
		}
		if applied {
			done = append(done, Applied{Version: step.Version, Name: step.Name})
		}
	}
	return done, nil
}

// Pending reports the migrations of ms not yet applied for t, without changing anything.
func (ms Migrations) Pending(ctx context.Context, db *sql.DB, t Table) ([]Migration, error) {
	have, err := recorded(ctx, db, t)
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, s := range ms.Steps {
		if !have[s.Version] {
			out = append(out, s)
		}
	}
	return out, nil
}

func ledgerFor(t Table) string {
	return Table{Schema: t.Schema, Name: ledger}.String()
}

// inTx runs fn in a transaction holding the migration lock of t, with search_path set
// to t's schema and the ledger present.
func (ms Migrations) inTx(ctx context.Context, db *sql.DB, t Table, fn func(*sql.Tx, map[int]bool) (bool, error)) (bool, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey(t)); err != nil {
		return false, fmt.Errorf("take migration lock: %w", err)
	}
	if t.Schema != "" {
		// CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the database even
		// when the schema exists, which a role that only owns its schema (managed
		// PostgreSQL) lacks: create it only when it is missing.
		var exists bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, t.Schema).Scan(&exists); err != nil {
			return false, fmt.Errorf("look up schema %s: %w", t.Schema, err)
		}
		if !exists {
			if _, err := tx.ExecContext(ctx, `CREATE SCHEMA IF NOT EXISTS `+t.Schema); err != nil {
				return false, fmt.Errorf("create schema %s: %w", t.Schema, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `SET LOCAL search_path TO `+t.Schema); err != nil {
			return false, fmt.Errorf("set search_path: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+ledgerFor(t)+` (
		tbl text NOT NULL,
		version integer NOT NULL,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (tbl, version))`); err != nil {
		return false, fmt.Errorf("create migration ledger: %w", err)
	}
	have, err := recordedTx(ctx, tx, t)
	if err != nil {
		return false, err
	}
	changed, err := fn(tx, have)
	if err != nil {
		return false, err
	}
	if !changed {
		return false, nil
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit migration: %w", err)
	}
	return true, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func recorded(ctx context.Context, db *sql.DB, t Table) (map[int]bool, error) {
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, ledgerFor(t)).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look up migration ledger: %w", err)
	}
	if !exists {
		return map[int]bool{}, nil
	}
	return recordedTx(ctx, db, t)
}

func recordedTx(ctx context.Context, q querier, t Table) (map[int]bool, error) {
	rows, err := q.QueryContext(ctx, `SELECT version FROM `+ledgerFor(t)+` WHERE tbl = $1`, t.String())
	if err != nil {
		return nil, fmt.Errorf("read migration ledger: %w", err)
	}
	defer rows.Close()
	have := map[int]bool{}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read migration ledger: %w", err)
		}
		have[v] = true
	}
	return have, rows.Err()
}

func lockKey(t Table) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("sidebox migrate " + t.String()))
	return int64(h.Sum64())
}

// TableExists reports whether t exists, resolving an unqualified name through search_path.
func TableExists(ctx context.Context, db *sql.DB, t Table) (bool, error) {
	var ok bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, t.String()).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up table %s: %w", t, err)
	}
	return ok, nil
}

// LoadTableMigrations reads the migration snippets at the root of fsys, written for
// the table name base.
func LoadTableMigrations(fsys fs.FS, base string) (Migrations, error) {
	ms, err := LoadMigrations(fsys, ".", base)
	if err != nil {
		return Migrations{}, fmt.Errorf("%s migrations: %w", base, err)
	}
	return ms, nil
}

// MigrateTable applies the snippets of fsys (written for base) not yet recorded for t.
func MigrateTable(ctx context.Context, db *sql.DB, fsys fs.FS, base string, t Table) error {
	ms, err := LoadTableMigrations(fsys, base)
	if err != nil {
		return err
	}
	if _, err := ms.Up(ctx, db, t); err != nil {
		return fmt.Errorf("migrate %s table %s: %w", base, t, err)
	}
	return nil
}

// CountRows counts the rows of t that match where (SQL); 0 when t does not exist.
func CountRows(ctx context.Context, db *sql.DB, t Table, where string) (int64, error) {
	ok, err := TableExists(ctx, db, t)
	if err != nil || !ok {
		return 0, err
	}
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+t.String()+` WHERE `+where).Scan(&n); err != nil {
		return 0, fmt.Errorf("count rows of %s: %w", t, err)
	}
	return n, nil
}

// CheckFirst returns an error when the ledger records a first step for t under another
// name than ms's: t was made by another migration set (a table's layouts each have
// their own, see the outbox's), whose later steps ms would wrongly take as applied.
func (ms Migrations) CheckFirst(ctx context.Context, db *sql.DB, t Table) error {
	if len(ms.Steps) == 0 {
		return nil
	}
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, ledgerFor(t)).Scan(&exists); err != nil {
		return fmt.Errorf("look up migration ledger: %w", err)
	}
	if !exists {
		return nil
	}
	var name string
	err := db.QueryRowContext(ctx, `SELECT name FROM `+ledgerFor(t)+` WHERE tbl = $1 AND version = $2`, t.String(), ms.Steps[0].Version).Scan(&name)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("read migration ledger: %w", err)
	case name != ms.Steps[0].Name:
		return fmt.Errorf("%s records migration %04d_%s for %s, not %04d_%s: the table was made by the other layout's migrations; roll it back with the setting it was made with, or delete its rows from %s if the table is gone",
			ledgerFor(t), ms.Steps[0].Version, name, t, ms.Steps[0].Version, ms.Steps[0].Name, ledgerFor(t))
	}
	return nil
}
