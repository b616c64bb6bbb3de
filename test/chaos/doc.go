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
// The servers: one private PostgreSQL and one private RabbitMQ node per run
// (max_message_size 20 MiB), used by the scenarios one at a time, each scenario with
// a database, exchange and queue of its own; scenario 8 starts a three-node cluster of
// its own (own node names, ports, data directories and epmd). The sidebox processes
// run with short timeouts and retry delays (publish timeout 5 s, 10 attempts with
// backoff from 200 ms to 2 s) so that a run takes minutes.
//
// `go test ./test/chaos/` runs the short form (each scenario smaller, about four
// minutes in all); SIDEBOX_CHAOS=full (`make chaos`) runs the full form and writes the
// table to results/latest.md. SIDEBOX_CHAOS_RUN=text runs only the scenarios whose
// name contains text. With -short the suite is skipped. A check that fails because of
// a defect whose fix is on another branch (see knownDefect) fails the full form but
// only shows under the table in the short form, so that `make test` stays green on
// main until the fix is merged.
package chaos
