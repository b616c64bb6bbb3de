// Command peer is the benchmarks' peer: the Watermill forwarder (watermill-sql's queue
// schema in PostgreSQL through lib/pq, forwarded to RabbitMQ by watermill-amqp with one
// pooled channel and publisher confirms), as a user would set it up instead of sidebox.
// The benchmarks in ../ build it and run it as a child process, so that Watermill's
// dependencies stay out of sidebox's module.
//
//	peer fill    -db URL -topic T -queue Q -n N            write N envelopes, 1,000 per INSERT
//	peer write   -db URL -topic T -queue Q -ids F -rate R  write one envelope per transaction at R/s
//	peer forward -db URL -amqp URL -topic T -poll D         run the forwarder until SIGTERM
//
// write takes the message IDs from file F, one a line, and prints each message's commit
// time (Unix ns, the wall clock), one a line in the same order, once all are written.
// forward prints "ready" once it runs, and on SIGUSR1 a line "stats queries=N tx=N"
// with the statements and transactions its database handle ran so far.
package main

import (
	"bufio"
	"context"
	stdsql "database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/lib/pq"
	amqp "github.com/rabbitmq/amqp091-go"
)

// payloadSize is the body size of the benchmarks' messages (bench/env_test.go).
const payloadSize = 256

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer fill|write|forward [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dbURL := fs.String("db", "", "PostgreSQL URL")
	amqpURL := fs.String("amqp", "", "RabbitMQ URL")
	topic := fs.String("topic", "outbox", "the forwarder's SQL topic (table watermill_<topic>)")
	queue := fs.String("queue", "", "destination queue (default exchange, routing key = queue)")
	n := fs.Int("n", 0, "fill: messages to write")
	idsFile := fs.String("ids", "", "write: file with the message IDs, one a line")
	rate := fs.Int("rate", 500, "write: messages per second")
	writers := fs.Int("writers", 4, "write: writer connections")
	poll := fs.Duration("poll", time.Second, "forward: the subscriber's poll interval")
	_ = fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	db, err := stdsql.Open("postgres", *dbURL)
	if err != nil {
		fatal(err)
	}
	defer db.Close()
	switch os.Args[1] {
	case "fill":
		err = fill(ctx, db, *topic, *queue, *n)
	case "write":
		err = write(ctx, db, *topic, *queue, *idsFile, *rate, *writers)
	case "forward":
		err = forward(ctx, db, *amqpURL, *topic, *poll)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(1)
}

// schema is the queue schema: rows are selected FOR UPDATE in order and deleted on ack.
func schema() (wsql.PostgreSQLQueueSchema, wsql.PostgreSQLQueueOffsetsAdapter) {
	return wsql.PostgreSQLQueueSchema{}, wsql.PostgreSQLQueueOffsetsAdapter{DeleteOnAck: true}
}

// envelopes returns a forwarder publisher that writes through exec.
func envelopes(exec wsql.ContextExecutor, topic string) (message.Publisher, error) {
	s, _ := schema()
	pub, err := wsql.NewPublisher(exec, wsql.PublisherConfig{SchemaAdapter: s}, watermill.NopLogger{})
	if err != nil {
		return nil, fmt.Errorf("sql publisher: %w", err)
	}
	return forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: topic}), nil
}

// payload is message i's body, the same as the benchmarks' (bench/env_test.go).
func payload(i int) []byte {
	b := make([]byte, payloadSize)
	s := fmt.Sprintf("%08x", i)
	for j := range b {
		b[j] = s[j%len(s)]
	}
	return b
}

// initSchema creates the forwarder's table, as the subscriber does on subscribing.
func initSchema(ctx context.Context, db *stdsql.DB, topic string) error {
	s, o := schema()
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromStdSQL(db), wsql.SubscriberConfig{SchemaAdapter: s, OffsetsAdapter: o}, watermill.NopLogger{})
	if err != nil {
		return fmt.Errorf("sql subscriber: %w", err)
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(topic); err != nil {
		return fmt.Errorf("initialise schema: %w", err)
	}
	return nil
}

func fill(ctx context.Context, db *stdsql.DB, topic, queue string, n int) error {
	if err := initSchema(ctx, db, topic); err != nil {
		return err
	}
	pub, err := envelopes(wsql.BeginnerFromStdSQL(db), topic)
	if err != nil {
		return err
	}
	for done := 0; done < n; {
		k := min(n-done, 1000)
		msgs := make([]*message.Message, k)
		for i := range msgs {
			msgs[i] = message.NewMessage(watermill.NewUUID(), payload(done+i))
			msgs[i].SetContext(ctx)
		}
		if err := pub.Publish(queue, msgs...); err != nil {
			return fmt.Errorf("fill: %w", err)
		}
		done += k
	}
	return nil
}

// write writes n messages at rate, one per transaction, taken by writers connections as
// the benchmarks' sidebox writer does (bench/latency_test.go), then prints each
// message's commit time.
func write(ctx context.Context, db *stdsql.DB, topic, queue, idsFile string, rate, writers int) error {
	if err := initSchema(ctx, db, topic); err != nil {
		return err
	}
	data, err := os.ReadFile(idsFile)
	if err != nil {
		return fmt.Errorf("message IDs: %w", err)
	}
	ids := strings.Fields(string(data))
	n := len(ids)
	db.SetMaxOpenConns(writers)
	db.SetMaxIdleConns(writers)
	if err := warm(ctx, db, writers); err != nil {
		return err
	}
	commitAt := make([]int64, n)
	jobs := make(chan int, n)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range jobs {
				if errs[g] != nil {
					continue
				}
				errs[g] = func() error {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						return fmt.Errorf("begin: %w", err)
					}
					pub, err := envelopes(wsql.TxFromStdSQL(tx), topic)
					if err != nil {
						_ = tx.Rollback()
						return err
					}
					msg := message.NewMessage(ids[i], payload(i))
					msg.SetContext(ctx)
					if err := pub.Publish(queue, msg); err != nil {
						_ = tx.Rollback()
						return fmt.Errorf("publish: %w", err)
					}
					if err := tx.Commit(); err != nil {
						return fmt.Errorf("commit: %w", err)
					}
					commitAt[i] = time.Now().UnixNano()
					return nil
				}()
			}
		})
	}
	period := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * period)))
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	for _, t := range commitAt {
		fmt.Fprintln(out, t)
	}
	return out.Flush()
}

// forward runs the forwarder from the SQL topic to RabbitMQ until ctx ends.
func forward(ctx context.Context, db *stdsql.DB, amqpURL, topic string, poll time.Duration) error {
	logger := watermill.NopLogger{}
	counted := &countingBeginner{db: wsql.BeginnerFromStdSQL(db)}
	s, o := schema()
	sub, err := wsql.NewSubscriber(counted, wsql.SubscriberConfig{
		SchemaAdapter:    s,
		OffsetsAdapter:   o,
		PollInterval:     poll,
		InitializeSchema: true,
	}, logger)
	if err != nil {
		return fmt.Errorf("sql subscriber: %w", err)
	}
	cfg := wamqp.NewDurableQueueConfig(amqpURL)
	cfg.Publish.ChannelPoolSize = 1
	cfg.Publish.ConfirmDelivery = true
	cfg.Publish.Mandatory = true
	// The message ID where sidebox puts it (the benchmarks' consumers count by it);
	// Watermill keeps it in a header of its own too.
	cfg.Marshaler = wamqp.DefaultMarshaler{PostprocessPublishing: func(p amqp.Publishing) amqp.Publishing {
		p.MessageId, _ = p.Headers[wamqp.DefaultMessageUUIDHeaderKey].(string)
		p.ContentType = "application/json"
		p.Timestamp = time.Now()
		return p
	}}
	pub, err := wamqp.NewPublisher(cfg, logger)
	if err != nil {
		return fmt.Errorf("amqp publisher: %w", err)
	}
	fwd, err := forwarder.NewForwarder(sub, pub, logger, forwarder.Config{ForwarderTopic: topic})
	if err != nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		<-fwd.Running()
		fmt.Println("ready")
		for range usr1 {
			fmt.Printf("stats queries=%d tx=%d\n", counted.queries.Load(), counted.txs.Load())
		}
	}()
	if err := fwd.Run(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	return fwd.Close()
}

// countingBeginner counts the statements and transactions the subscriber runs: its idle
// query rate.
type countingBeginner struct {
	db      wsql.Beginner
	queries atomic.Int64
	txs     atomic.Int64
}

func (c *countingBeginner) BeginTx(ctx context.Context, opts *stdsql.TxOptions) (wsql.Tx, error) {
	tx, err := c.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.txs.Add(1)
	return &countingTx{Tx: tx, c: c}, nil
}

func (c *countingBeginner) ExecContext(ctx context.Context, q string, args ...any) (wsql.Result, error) {
	c.queries.Add(1)
	return c.db.ExecContext(ctx, q, args...)
}

func (c *countingBeginner) QueryContext(ctx context.Context, q string, args ...any) (wsql.Rows, error) {
	c.queries.Add(1)
	return c.db.QueryContext(ctx, q, args...)
}

type countingTx struct {
	wsql.Tx
	c *countingBeginner
}

func (t *countingTx) ExecContext(ctx context.Context, q string, args ...any) (wsql.Result, error) {
	t.c.queries.Add(1)
	return t.Tx.ExecContext(ctx, q, args...)
}

func (t *countingTx) QueryContext(ctx context.Context, q string, args ...any) (wsql.Rows, error) {
	t.c.queries.Add(1)
	return t.Tx.QueryContext(ctx, q, args...)
}

// warm opens n connections of db before the clock starts.
func warm(ctx context.Context, db *stdsql.DB, n int) error {
	conns := make([]*stdsql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("open connection: %w", err)
		}
		conns = append(conns, c)
		if err := c.PingContext(ctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
	return nil
}
