package outboxdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/sidebox/sidebox/internal/pg"
)

// Partitioning is the layout of an outbox table: plain (migrations 0001-0006) or
// partitioned by day (the partitioned migration), SIDEBOX_OUTBOX_PARTITIONS.
type Partitioning string

// The layouts.
const (
	NotPartitioned Partitioning = "none"
	Daily          Partitioning = "daily"
)

// ParsePartitioning reads a layout; "" is NotPartitioned.
func ParsePartitioning(s string) (Partitioning, error) {
	switch p := Partitioning(strings.ToLower(strings.TrimSpace(s))); p {
	case "", NotPartitioned:
		return NotPartitioned, nil
	case Daily:
		return Daily, nil
	default:
		return "", fmt.Errorf("must be none or daily, got %q", s)
	}
}

// PartitionedMigrations reads the migration snippets of the partitioned outbox table
// from fsys, the files that outbox.PartitionedMigrationFiles embeds.
func PartitionedMigrations(fsys fs.FS) (pg.Migrations, error) {
	return pg.LoadTableMigrations(fsys, Base)
}

// Layout reports whether t exists and, when it does, how it is laid out: relkind 'p'
// (a partitioned table) is Daily, 'r' NotPartitioned.
func Layout(ctx context.Context, db *sql.DB, t pg.Table) (exists bool, p Partitioning, err error) {
	var kind sql.NullString
	if err := db.QueryRowContext(ctx, `SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))`, t.String()).Scan(&kind); err != nil {
		return false, "", fmt.Errorf("look up table %s: %w", t, err)
	}
	switch kind.String {
	case "":
		return false, "", nil
	case "p":
		return true, Daily, nil
	case "r":
		return true, NotPartitioned, nil
	default:
		return true, "", fmt.Errorf("%s is not a table (relkind %s)", t, kind.String)
	}
}

// LayoutError says that a table exists in another layout than the configured one.
type LayoutError struct {
	Table      pg.Table
	Want, Have Partitioning
}

func (e *LayoutError) Error() string {
	if e.Have == Daily {
		return fmt.Sprintf("outbox table %s is partitioned by day, but SIDEBOX_OUTBOX_PARTITIONS is %s: set SIDEBOX_OUTBOX_PARTITIONS=daily for it", e.Table, e.Want)
	}
	return fmt.Sprintf("outbox table %s is a plain table, but SIDEBOX_OUTBOX_PARTITIONS is %s: sidebox does not convert a table; create the partitioned outbox under another name (or rename the old one) and let the relay drain the old table (README, \"Retention and replay\"), or unset SIDEBOX_OUTBOX_PARTITIONS", e.Table, e.Want)
}

// CheckLayout returns a *LayoutError when t exists and is not laid out as want; nil
// when it is, or when t does not exist.
func CheckLayout(ctx context.Context, db *sql.DB, t pg.Table, want Partitioning) error {
	exists, have, err := Layout(ctx, db, t)
	if err != nil || !exists {
		return err
	}
	if have != want {
		return &LayoutError{Table: t, Want: want, Have: have}
	}
	return nil
}

// PartitionsAhead is how many days after today have their partition made in advance:
// an outage of the relays shorter than that never sends rows to the default partition.
const PartitionsAhead = 3

// partitionLockTimeout bounds the wait for the lock on the partitioned table that
// creating and dropping a partition take (ACCESS EXCLUSIVE, as PostgreSQL requires
// with a default partition): writers queue behind that request, so it must be short.
// A round that times out is retried at the next.
const partitionLockTimeout = time.Second

// dayPartition is the partition of t for the (UTC) day: <table>_pYYYYMMDD.
func dayPartition(t pg.Table, day time.Time) pg.Table {
	return pg.Table{Schema: t.Schema, Name: t.Name + "_p" + day.Format("20060102")}
}

// DefaultPartition is the partition of t that takes rows of a day without its own.
func DefaultPartition(t pg.Table) pg.Table {
	return pg.Table{Schema: t.Schema, Name: t.Name + "_default"}
}

// Maintenance is what one MaintainPartitions round did.
type Maintenance struct {
	Created []string // partitions made
	Dropped []string // partitions dropped
	// Kept are partitions past the retention window that stay, each with the reason.
	Kept map[string]string
	// Skipped are days whose partition was not made because rows of that day sit in
	// the default partition, each with the reason.
	Skipped map[string]string
	// Busy is true when a transaction gave up: the lock on the table was not granted
	// within a second, or another relay held the maintenance lock.
	Busy bool
	// Purged counts the rows published past the window deleted from the default
	// partition.
	Purged int64
}

// MaintainPartitions keeps the partitions of the partitioned outbox t, by the
// database's clock, in UTC days:
//   - it creates the partitions of today and the PartitionsAhead next days that are
//     missing, except for a day that has rows in the default partition (creating it
//     would fail: Skipped);
//   - it drops each day's partition whose day ended more than retention ago, whose
//     last row was published more than retention ago, and that holds no unpublished
//     row (pending, retrying or dead: Kept, with the reason);
//   - it purges the default partition's rows published more than retention ago.
//
// Several relays on one table take turns through an advisory transaction lock; each
// creation and drop is its own short transaction that waits at most a second for the
// table's lock.
func MaintainPartitions(ctx context.Context, db *sql.DB, t pg.Table, retention time.Duration) (Maintenance, error) {
	m := Maintenance{Kept: map[string]string{}, Skipped: map[string]string{}}
	var today time.Time
	if err := db.QueryRowContext(ctx, `SELECT (now() AT TIME ZONE 'UTC')::date`).Scan(&today); err != nil {
		return m, fmt.Errorf("partitions of %s: read the database's date: %w", t, err)
	}
	today = time.Date(today.Year(), today.Month(), today.Day(), 0, 0, 0, 0, time.UTC)
	for i := range PartitionsAhead + 1 {
		if err := createPartition(ctx, db, t, today.AddDate(0, 0, i), &m); err != nil {
			return m, err
		}
	}
	if err := dropExpired(ctx, db, t, retention, &m); err != nil {
		return m, err
	}
	if ok, err := pg.TableExists(ctx, db, DefaultPartition(t)); err != nil || !ok {
		return m, err
	}
	for {
		n, err := Purge(ctx, db, DefaultPartition(t), retention)
		if err != nil {
			return m, err
		}
		m.Purged += n
		if n < PurgeBatch {
			return m, nil
		}
	}
}

// maintainLock is the advisory lock key of t's partition maintenance.
func maintainLock(t pg.Table) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("sidebox partitions " + t.String()))
	return int64(h.Sum64())
}

// inMaintenanceTx runs fn in a transaction that holds t's maintenance lock and, once fn
// asks for it (lockTable), t's ACCESS EXCLUSIVE lock. It returns busy when either lock
// was not granted in time: another relay maintains t, or the table is in use longer
// than partitionLockTimeout.
func inMaintenanceTx(ctx context.Context, db *sql.DB, t pg.Table, fn func(tx *sql.Tx, lockTable func() error) error) (busy bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	var got bool
	if err := tx.QueryRowContext(ctx, `SELECT pg_try_advisory_xact_lock($1)`, maintainLock(t)).Scan(&got); err != nil {
		return false, err
	}
	if !got {
		return true, nil
	}
	lockTable := func() error {
		// The parent first, as inserts and claims take it: no lock-order deadlock
		// with them.
		_, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = `+strconv.FormatInt(partitionLockTimeout.Milliseconds(), 10)+`;
LOCK TABLE `+t.String()+` IN ACCESS EXCLUSIVE MODE`)
		return err
	}
	if err := fn(tx, lockTable); err != nil {
		var pqErr *pq.Error
		if errors.As(err, &pqErr) && pqErr.Code == "55P03" { // lock_not_available
			return true, nil
		}
		return false, err
	}
	return false, tx.Commit()
}

// createPartition makes the partition of day unless it exists.
func createPartition(ctx context.Context, db *sql.DB, t pg.Table, day time.Time, m *Maintenance) error {
	p := dayPartition(t, day)
	exists, err := pg.TableExists(ctx, db, p)
	if err != nil || exists {
		return err
	}
	lo, hi := day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339)
	busy, err := inMaintenanceTx(ctx, db, t, func(tx *sql.Tx, lockTable func() error) error {
		if err := lockTable(); err != nil {
			return err
		}
		var there, inDefault bool
		if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, p.String()).Scan(&there); err != nil || there {
			return err // another relay made it meanwhile
		}
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM `+DefaultPartition(t).String()+`
WHERE created_at >= $1::timestamptz AND created_at < $2::timestamptz)`, lo, hi).Scan(&inDefault); err != nil {
			return err
		}
		if inDefault {
			m.Skipped[p.String()] = "rows of that day are in " + DefaultPartition(t).String() + ", which a partition of the day cannot take over; they stay there and are purged after the retention window"
			return nil
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE `+p.String()+` PARTITION OF `+t.String()+`
FOR VALUES FROM ('`+lo+`') TO ('`+hi+`')`); err != nil {
			return err
		}
		m.Created = append(m.Created, p.String())
		return nil
	})
	m.Busy = m.Busy || busy
	if err != nil {
		return fmt.Errorf("create partition %s: %w", p, err)
	}
	return nil
}

// dropExpired drops the day partitions of t past the retention window that hold only
// rows published before it.
func dropExpired(ctx context.Context, db *sql.DB, t pg.Table, retention time.Duration, m *Maintenance) error {
	rows, err := db.QueryContext(ctx, `SELECT c.relname, now() - $2::float8 * interval '1 second'
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass($1) ORDER BY c.relname`, t.String(), retention.Seconds())
	if err != nil {
		return fmt.Errorf("list partitions of %s: %w", t, err)
	}
	var old []pg.Table
	var cutoff time.Time
	for rows.Next() {
		var name string
		if err := rows.Scan(&name, &cutoff); err != nil {
			rows.Close()
			return fmt.Errorf("list partitions of %s: %w", t, err)
		}
		day, ok := strings.CutPrefix(name, t.Name+"_p")
		d, err := time.Parse("20060102", day)
		if !ok || err != nil {
			continue // the default partition, or one that sidebox did not make
		}
		if end := d.AddDate(0, 0, 1); !end.After(cutoff) {
			old = append(old, pg.Table{Schema: t.Schema, Name: name})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list partitions of %s: %w", t, err)
	}
	for _, p := range old {
		if err := dropPartition(ctx, db, t, p, retention, m); err != nil {
			return err
		}
	}
	return nil
}

// keepReason says why partition p may not be dropped yet: it holds unpublished rows,
// or rows published within the retention window; "" when it may be. Each part reads
// one partial index.
func keepReason(ctx context.Context, q querier, p pg.Table, retention time.Duration) (string, error) {
	var pending, dead, recent bool
	err := q.QueryRowContext(ctx, `SELECT
  EXISTS (SELECT 1 FROM `+p.String()+` WHERE dead_at IS NULL AND published_at IS NULL),
  EXISTS (SELECT 1 FROM `+p.String()+` WHERE dead_at IS NOT NULL),
  coalesce((SELECT max(published_at) FROM `+p.String()+` WHERE published_at IS NOT NULL) >= now() - $1::float8 * interval '1 second', false)`,
		retention.Seconds()).Scan(&pending, &dead, &recent)
	switch {
	case err != nil:
		return "", err
	case pending:
		return "it holds unpublished rows (pending or retrying); it is dropped once they are published and the window has passed", nil
	case dead:
		return "it holds dead rows; retry or discard them (sidebox dead)", nil
	case recent:
		return "it holds rows published within the retention window", nil
	}
	return "", nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// dropPartition drops partition p of t unless keepReason finds a reason to keep it,
// looked at again under the table's lock: a replay or a late insert may have put an
// unpublished row there meanwhile.
func dropPartition(ctx context.Context, db *sql.DB, t, p pg.Table, retention time.Duration, m *Maintenance) error {
	why, err := keepReason(ctx, db, p, retention)
	if err != nil {
		return fmt.Errorf("look into partition %s: %w", p, err)
	}
	if why != "" {
		m.Kept[p.String()] = why
		return nil
	}
	busy, err := inMaintenanceTx(ctx, db, t, func(tx *sql.Tx, lockTable func() error) error {
		if err := lockTable(); err != nil {
			return err
		}
		var there bool
		if err := tx.QueryRowContext(ctx, `SELECT to_regclass($1) IS NOT NULL`, p.String()).Scan(&there); err != nil || !there {
			return err // another relay dropped it meanwhile
		}
		why, err := keepReason(ctx, tx, p, retention)
		if err != nil || why != "" {
			if why != "" {
				m.Kept[p.String()] = why
			}
			return err
		}
		if _, err := tx.ExecContext(ctx, `DROP TABLE `+p.String()); err != nil {
			return err
		}
		m.Dropped = append(m.Dropped, p.String())
		return nil
	})
	m.Busy = m.Busy || busy
	if err != nil {
		return fmt.Errorf("drop partition %s: %w", p, err)
	}
	return nil
}
