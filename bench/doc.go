// Package bench measures sidebox against the raw clients it is built on, side by side
// in one run: the relay's drain rate next to pipelined amqp091-go confirm publishing,
// commit-to-delivery latency at a steady rate and the idle relay's polling, the writers'
// cost of the outbox wake-up trigger, and the inbox's ingest rate next to a raw
// amqp091-go consumer.
//
// The package holds only benchmarks; run them with `make bench` (one measured run per
// benchmark, -benchtime 1x). README.md describes the method and the latest figures.
package bench
