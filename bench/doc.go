// Package bench measures sidebox against the raw clients it is built on, side by side
// in one run: the relay's drain rate next to pipelined amqp091-go confirm publishing,
// commit-to-delivery latency at a steady rate and the idle relay's polling, the writers'
// cost of the outbox wake-up trigger, the inbox's ingest rate next to a raw amqp091-go
// consumer, the relay next to the Watermill forwarder (bench/peer, run as a child
// process), the relay at scale (several relays, its process's memory and CPU, 2,000
// msg/s) and by backlog size.
//
// The package holds only benchmarks; run them with `make bench` (one measured run per
// benchmark, -benchtime 1x), which also writes bench/results/<date>.md with plots
// (bench/report). README.md describes the method.
package bench
