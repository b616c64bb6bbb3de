package outboxdb

import "github.com/sidebox/sidebox/internal/pg"

// InsertValues follows `INSERT INTO <table>` in a writer's statement: $1 the id, $2
// exchange, $3 routing key, $4 payload, $5 message type, $6 content type
// (NULL: application/json), $7 headers as JSON, $8 ordering key, $9 when it is due
// (NULL: now).
const InsertValues = ` (id, exchange, routing_key, payload, message_type, content_type, headers, ordering_key, available_at)
VALUES ($1, $2, $3, $4, $5, coalesce($6, 'application/json'), $7::jsonb, $8, coalesce($9::timestamptz, now()))`

// InsertSQL is a writer's statement for table t.
func InsertSQL(t pg.Table) string { return `INSERT INTO ` + t.String() + InsertValues }
