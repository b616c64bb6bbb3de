package config

import (
	"fmt"
	"strings"

	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
)

// parseTables reads a comma-separated list of table names (SIDEBOX_OUTBOX_TABLE,
// SIDEBOX_INBOX_TABLE): each item a validated name or schema.name, none twice. It
// returns the problem as an error message without the variable's name.
func parseTables(s string) ([]pg.Table, string) {
	parts := strings.Split(s, ",")
	var out []pg.Table
	seen := map[pg.Table]bool{}
	for i, p := range parts {
		p = strings.TrimSpace(p)
		which := ""
		if len(parts) > 1 {
			which = fmt.Sprintf("item %d of %d: ", i+1, len(parts))
		}
		if p == "" {
			return nil, which + "empty; want name or schema.name, or a comma-separated list of them"
		}
		t, err := pg.ParseTable(p)
		if err != nil {
			return nil, which + err.Error()
		}
		if seen[t] {
			return nil, fmt.Sprintf("lists %s twice", t)
		}
		seen[t] = true
		out = append(out, t)
	}
	return out, ""
}

// checkTables fills Outboxes and Inboxes (and Outbox and Inbox, their first items) from
// SIDEBOX_OUTBOX_TABLE and SIDEBOX_INBOX_TABLE, for the groups asked about.
func (c *Config) checkTables(groups Group, bad func(string, string, ...any)) {
	if groups&Outbox != 0 {
		ts, p := parseTables(c.OutboxTable)
		if p != "" {
			bad("SIDEBOX_OUTBOX_TABLE", "%s", p)
		}
		c.Outboxes = ts
		c.Outbox = first(ts)
		if p, err := c.OutboxPartitioning(); err != nil {
			bad(err.Var, "%s", err.Problem)
		} else if p == outboxdb.Daily {
			for _, t := range ts {
				// Room for the partitions' suffix, _pYYYYMMDD.
				if len(t.Name) > maxPartitionedName {
					bad("SIDEBOX_OUTBOX_TABLE", "%q is longer than %d characters, too long for the names of its daily partitions (%s_pYYYYMMDD)", t.Name, maxPartitionedName, t.Name)
				}
			}
		}
	}
	if groups&Inbox == 0 {
		return
	}
	ts, p := parseTables(c.InboxTable)
	if p != "" {
		bad("SIDEBOX_INBOX_TABLE", "%s", p)
	}
	c.Inboxes = ts
	c.Inbox = first(ts)
	if groups&Outbox != 0 {
		for _, in := range c.Inboxes {
			for _, out := range c.Outboxes {
				if in == out {
					bad("SIDEBOX_INBOX_TABLE", "must differ from SIDEBOX_OUTBOX_TABLE, both name %q", in.String())
				}
			}
		}
	}
	// One queue, one consumer, one table: the consumer stores into one inbox table.
	// More tables are for migrate and status (a sidecar per queue consumes into each).
	if groups&Consumer != 0 && len(c.Inboxes) > 1 {
		bad("SIDEBOX_INBOX_TABLE", "lists %d tables, but the consumer of SIDEBOX_INBOX_QUEUE stores into one; give one table to a sidecar that consumes (several are for `sidebox migrate` and `sidebox status`)", len(c.Inboxes))
	}
}

func first(ts []pg.Table) pg.Table {
	if len(ts) == 0 {
		return pg.Table{}
	}
	return ts[0]
}

// maxPartitionedName is the longest name of an outbox table partitioned by day: its
// partitions are named <name>_pYYYYMMDD, within PostgreSQL's 63 characters.
const maxPartitionedName = 63 - len("_pYYYYMMDD")

// OutboxPartitioning returns the layout of the outbox tables, SIDEBOX_OUTBOX_PARTITIONS,
// or the *Error that names the variable.
func (c *Config) OutboxPartitioning() (outboxdb.Partitioning, *Error) {
	p, err := outboxdb.ParsePartitioning(c.OutboxPartitions)
	if err != nil {
		return "", &Error{Var: "SIDEBOX_OUTBOX_PARTITIONS", Problem: err.Error()}
	}
	return p, nil
}
