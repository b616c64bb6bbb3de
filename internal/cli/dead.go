package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/sidebox/sidebox/internal/config"
	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// listFlag is a flag that may be given several times, or once with a comma-separated
// list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// deadFlags are the flags of every `dead` subcommand.
type deadFlags struct {
	inbox     bool
	consumer  string
	ids, keys listFlag
	olderThan time.Duration
	all       bool
	dryRun    bool
	asJSON    bool
	limit     int
	tables    listFlag
}

func (f *deadFlags) selector() pg.DeadSelector {
	return pg.DeadSelector{IDs: f.ids, Keys: f.keys, OlderThan: f.olderThan, All: f.all}
}

// deadCmd is `sidebox dead list|retry|discard`: the dead rows of the outbox, or of the
// inbox with --inbox.
func deadCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("dead: want a subcommand: list, retry or discard")
	}
	sub, rest := args[0], args[1:]
	if sub != "list" && sub != "retry" && sub != "discard" {
		return usagef("dead: unknown subcommand %q; want list, retry or discard", sub)
	}
	var f deadFlags
	fs := newFlags("dead " + sub)
	fs.BoolVar(&f.inbox, "inbox", false, "the inbox's dead rows instead of the outbox's")
	fs.StringVar(&f.consumer, "consumer", "", "with --inbox: only this consumer's rows")
	fs.Var(&f.ids, "id", "message id (repeatable, or comma-separated)")
	fs.Var(&f.keys, "key", "ordering key (repeatable, or comma-separated)")
	fs.DurationVar(&f.olderThan, "older-than", 0, "rows written (received) longer ago than this")
	fs.BoolVar(&f.all, "all", false, "every dead row")
	fs.Var(&f.tables, "table", "only this table (repeatable, or comma-separated); default: every table of SIDEBOX_OUTBOX_TABLE (SIDEBOX_INBOX_TABLE with --inbox)")
	if sub == "list" {
		fs.BoolVar(&f.asJSON, "json", false, "print JSON")
		fs.IntVar(&f.limit, "limit", 100, "most rows listed; 0: all")
	} else {
		fs.BoolVar(&f.dryRun, "dry-run", false, "print what would change, change nothing")
	}
	if err := noArgs(fs, rest); err != nil {
		return err
	}
	if err := f.check(fs, sub); err != nil {
		return err
	}
	tables, db, err := openTables(ctx, fs.Name(), f.inbox, f.tables)
	if err != nil {
		return err
	}
	defer db.Close()
	d := deadRun{db: db, sub: sub, f: &f, w: stdout, several: len(tables) > 1, listed: []any{}}
	for _, t := range tables {
		if f.inbox {
			err = d.inbox(ctx, t)
		} else {
			err = d.outbox(ctx, t)
		}
		if err != nil {
			return err
		}
	}
	if f.asJSON {
		return printJSON(stdout, d.listed)
	}
	return nil
}

// openTables reads the configuration of a command that works on tables (the outbox
// tables, or the inbox tables when inbox), picks those named by --table or else every
// configured one, and connects to the database. A named table must be a valid
// identifier; it need not be configured, so that a tool can reach a table the sidecar
// no longer serves.
func openTables(ctx context.Context, cmd string, inbox bool, named []string) ([]pg.Table, *sql.DB, error) {
	what := config.Database | config.Outbox
	if inbox {
		what = config.Database | config.Inbox
	}
	cfg, err := loadConfig(what)
	if err != nil {
		return nil, nil, err
	}
	tables, kind := cfg.Outboxes, "outbox"
	if inbox {
		tables, kind = cfg.Inboxes, "inbox"
	}
	if len(named) > 0 {
		tables = make([]pg.Table, 0, len(named))
		for _, n := range named {
			t, err := pg.ParseTable(n)
			if err != nil {
				return nil, nil, usagef("%s: --table %q is not a valid %s table name: %v", cmd, n, kind, err)
			}
			tables = append(tables, t)
		}
	}
	db, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	return tables, db, nil
}

// deadRun is one `dead` command over one or more tables. With --json, list collects
// the rows of every table, each with its table's name, and prints them at the end.
type deadRun struct {
	db      *sql.DB
	sub     string
	f       *deadFlags
	w       io.Writer
	several bool  // more than one table: the text output names each
	listed  []any // --json: the rows listed so far
}

// check refuses contradictory or missing selectors, before anything connects.
func (f *deadFlags) check(fs *flag.FlagSet, sub string) error {
	s := f.selector()
	switch {
	case f.consumer != "" && !f.inbox:
		return usagef("%s: --consumer applies to the inbox: add --inbox", fs.Name())
	case f.olderThan < 0:
		return usagef("%s: --older-than must be positive, got %v", fs.Name(), f.olderThan)
	case f.limit < 0:
		return usagef("%s: --limit must be 0 or more, got %d", fs.Name(), f.limit)
	case f.all && (len(f.ids) > 0 || len(f.keys) > 0 || f.olderThan > 0):
		return usagef("%s: --all selects every dead row; give it alone or leave it out", fs.Name())
	case sub != "list" && s.Empty():
		return usagef("%s: say which dead rows: --id, --key, --older-than (combined with AND) or --all", fs.Name())
	}
	if !f.inbox {
		for _, id := range f.ids {
			if _, err := uuid.Parse(id); err != nil {
				return usagef("%s: --id %q is not an outbox message id (a UUID)", fs.Name(), id)
			}
		}
	}
	return nil
}

// deadView is a dead row of either table, for printing.
type deadView struct {
	consumer, id, key, exchange, routingKey, lastError string
	seq                                                int64
	attempts                                           int
	age                                                float64
}

// outboxDead is a dead outbox row as `dead list --json` prints it.
type outboxDead struct {
	Table string `json:"table"`
	outboxdb.DeadRow
}

// inboxDead is a dead inbox row as `dead list --inbox --json` prints it.
type inboxDead struct {
	Table string `json:"table"`
	inboxdb.DeadRow
}

func (d *deadRun) outbox(ctx context.Context, t pg.Table) error {
	db, sub, f := d.db, d.sub, d.f
	what := "outbox table " + t.String()
	var (
		rows []outboxdb.DeadRow
		err  error
	)
	switch sub {
	case "list":
		var found bool
		rows, found, err = outboxdb.ListDead(ctx, db, t, f.selector(), listLimit(f.limit))
		if err == nil && !found {
			err = fmt.Errorf("%s does not exist: run `sidebox migrate up`", what)
		}
		if err == nil && f.asJSON {
			for _, r := range capped(rows, f.limit) {
				d.listed = append(d.listed, outboxDead{Table: t.String(), DeadRow: r})
			}
			return nil
		}
	case "retry":
		rows, err = outboxdb.Retry(ctx, db, t, f.selector(), f.dryRun)
	case "discard":
		rows, err = outboxdb.Discard(ctx, db, t, f.selector(), f.dryRun)
	}
	if err != nil {
		return fmt.Errorf("dead %s on %s: %w", sub, what, err)
	}
	views := make([]deadView, len(rows))
	for i, r := range rows {
		views[i] = deadView{id: r.ID, key: keyText(r.OrderingKey), exchange: r.Exchange, routingKey: r.RoutingKey,
			lastError: r.LastError, seq: r.Seq, attempts: r.Attempts, age: r.AgeSeconds}
	}
	return d.print(what, views)
}

func (d *deadRun) inbox(ctx context.Context, t pg.Table) error {
	db, sub, f := d.db, d.sub, d.f
	what := "inbox table " + t.String()
	var (
		rows []inboxdb.DeadRow
		err  error
	)
	switch sub {
	case "list":
		var found bool
		rows, found, err = inboxdb.ListDead(ctx, db, t, f.consumer, f.selector(), listLimit(f.limit))
		if err == nil && !found {
			err = fmt.Errorf("%s does not exist: run `sidebox migrate up`", what)
		}
		if err == nil && f.asJSON {
			for _, r := range capped(rows, f.limit) {
				d.listed = append(d.listed, inboxDead{Table: t.String(), DeadRow: r})
			}
			return nil
		}
	case "retry":
		rows, err = inboxdb.Retry(ctx, db, t, f.consumer, f.selector(), f.dryRun)
	case "discard":
		rows, err = inboxdb.Discard(ctx, db, t, f.consumer, f.selector(), f.dryRun)
	}
	if err != nil {
		return fmt.Errorf("dead %s on %s: %w", sub, what, err)
	}
	views := make([]deadView, len(rows))
	for i, r := range rows {
		views[i] = deadView{consumer: r.Consumer, id: r.MessageID, key: keyText(r.OrderingKey), exchange: r.Exchange,
			routingKey: r.RoutingKey, lastError: r.LastError, seq: r.Seq, attempts: r.Attempts, age: r.AgeSeconds}
	}
	return d.print(what, views)
}

// print prints one table's part: a list under its table's name when there are
// several (a change's summary line names its table anyway).
func (d *deadRun) print(what string, views []deadView) error {
	if d.several && d.sub == "list" && len(views) > 0 {
		if _, err := fmt.Fprintf(d.w, "%s:\n", what); err != nil {
			return err
		}
	}
	return printDead(d.w, what, d.sub, d.f, views)
}

// listLimit asks for one row more than shown, to say that there are more.
func listLimit(limit int) int {
	if limit == 0 {
		return 0
	}
	return limit + 1
}

func capped[T any](rows []T, limit int) []T {
	if rows == nil {
		rows = []T{} // JSON [] rather than null
	}
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	return rows
}

func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func keyText(k *string) string {
	if k == nil {
		return "-"
	}
	return *k
}

// printDead prints a list as a table, or what a change did (or would do) row by row.
func printDead(w io.Writer, what, sub string, f *deadFlags, rows []deadView) error {
	var b strings.Builder
	if sub == "list" {
		more := f.limit > 0 && len(rows) > f.limit
		rows = capped(rows, f.limit)
		if len(rows) == 0 {
			fmt.Fprintf(&b, "%s: no dead rows\n", what)
			_, err := io.WriteString(w, b.String())
			return err
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		if f.inbox {
			fmt.Fprintln(tw, "CONSUMER\tMESSAGE ID\tKEY\tEXCHANGE\tROUTING KEY\tATTEMPTS\tLAST ERROR\tAGE")
		} else {
			fmt.Fprintln(tw, "ID\tKEY\tEXCHANGE\tROUTING KEY\tATTEMPTS\tLAST ERROR\tAGE")
		}
		for _, r := range rows {
			if f.inbox {
				fmt.Fprintf(tw, "%s\t", r.consumer)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.id, r.key, orDash(r.exchange), orDash(r.routingKey),
				r.attempts, shortError(r.lastError), age(r.age))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if more {
			fmt.Fprintf(&b, "(first %d dead rows of %s in seq order; --limit 0 lists all)\n", f.limit, what)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}

	verb := map[string]string{"retry": "retried", "discard": "discarded"}[sub]
	if f.dryRun {
		verb = "would " + sub
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "%s ", verb)
		if f.inbox {
			fmt.Fprintf(&b, "consumer %s message %s", r.consumer, r.id)
		} else {
			fmt.Fprintf(&b, "%s", r.id)
		}
		fmt.Fprintf(&b, " (key %s, seq %d)\n", r.key, r.seq)
	}
	switch {
	case len(rows) == 0:
		fmt.Fprintf(&b, "%s: no dead rows matched; nothing changed\n", what)
	case f.dryRun:
		fmt.Fprintf(&b, "%s: %s %d dead rows (dry run: nothing changed)\n", what, verb, len(rows))
	default:
		fmt.Fprintf(&b, "%s: %s %d dead rows\n", what, verb, len(rows))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// shortError fits an error text on one table line.
func shortError(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 72 {
		return string(r[:71]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}

func age(seconds float64) string {
	return time.Duration(seconds * float64(time.Second)).Round(time.Second).String()
}
