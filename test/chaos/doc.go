// Package chaos is sidebox's fault suite: each scenario runs the whole path
//
//	writer (orders + outbox row, one transaction) → outbox → `sidebox relay`
//	→ RabbitMQ → `sidebox inbox` → inbox table → inbox.Processor (the effect)
//
// against private PostgreSQL and RabbitMQ servers while one real fault happens (a
// SIGKILLed relay, a stopped broker, a crashed database, a broken network link, a
// memory alarm, a cluster node lost, bad input, ...), lets everything settle, and
// counts effects, not deliveries. The relay and the inbox consumer are the real
// sidebox binary, built once per run; the writer and the processor are Go code using
// the public packages outbox and inbox.
//
// The suite prints one Markdown table, one row per scenario:
//
//		| scenario | committed | delivered | lost | phantom | duplicates | absorbed | dead |
//
//	  - committed: orders whose writer transaction committed (rows in the orders
//	    table; each wrote one outbox row in the same transaction). About a tenth of the
//	    writer's transactions roll back on purpose after writing their outbox row.
//	  - delivered: distinct committed orders whose effect happened: the processor
//	    inserted their shipment row in the same transaction that set the inbox row's
//	    processed_at. Counted at the effect, never at the broker.
//	  - lost: committed orders without an effect that are not dead, after the settle
//	    period (the outbox, the queue and the unprocessed inbox empty, or the settle
//	    deadline passed).
//	  - phantom: effects of orders that never committed (the rolled-back ones).
//	  - duplicates: deliveries to the inbox beyond the first of a message (redeliveries
//	    and republishes): the sum of sidebox_inbox_duplicates_total over every inbox
//	    process of the scenario, read just before it was stopped.
//	  - absorbed: duplicates that did not take effect twice: duplicates minus the
//	    shipment rows beyond the first of an order. It must equal duplicates.
//	  - dead: messages kept dead on purpose, with their reasons listed under the table:
//	    outbox rows dead after their last attempt, inbox rows dead in the processor, and
//	    deliveries the inbox rejected (no message_id).
//
// Every row must show lost 0 and phantom 0, duplicates only where a process or server
// crashed, all absorbed. Scenario checks beyond the columns (per-key order, attempts
// not burnt during a memory alarm, processes that exit cleanly on SIGTERM) are listed
// under the table as notes, and fail the test.
//
// `go test ./test/chaos/` runs the short form (each scenario smaller, a few minutes
// in all); SIDEBOX_CHAOS=full (`make chaos`) runs the full form and writes the table
// to results/latest.md. With -short the suite is skipped.
package chaos
