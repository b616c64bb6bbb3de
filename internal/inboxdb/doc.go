// Package inboxdb holds the SQL of the inbox table, in one place: the consumer's
// insert, Claim's insert, the processor's claim and marks, the purger's delete, the
// state counts behind `sidebox status` and the backlog gauges, and the check that
// guards `migrate down`.
package inboxdb
