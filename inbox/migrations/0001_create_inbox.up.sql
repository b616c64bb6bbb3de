-- sidebox inbox table. One row per message a consumer has seen: the primary key
-- (consumer, message_id) is what turns at-least-once delivery into exactly-once effect.
-- Rows are written by `sidebox inbox` (unprocessed) or by a service claiming a message
-- id inside its own transaction (processed at once), and processed in the service's
-- transaction:
--   UPDATE inbox SET processed_at = now() WHERE consumer = $1 AND message_id = $2;
-- Every statement is idempotent: this file may run again over what it made (another
-- migration tool and `sidebox migrate up`, in either order).
CREATE TABLE IF NOT EXISTS inbox (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    exchange     text        NOT NULL DEFAULT '',
    routing_key  text        NOT NULL DEFAULT '',
    message_type text,
    content_type text,
    headers      jsonb       NOT NULL DEFAULT '{}',
    payload      bytea       NOT NULL DEFAULT '',
    ordering_key text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    available_at timestamptz NOT NULL DEFAULT now(),
    dead_at      timestamptz,
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, message_id),
    CONSTRAINT inbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
);

-- States: unprocessed (processed_at IS NULL AND dead_at IS NULL; attempts > 0 = retrying),
-- processed (processed_at IS NOT NULL), dead (dead_at IS NOT NULL, kept until handled).

-- Next unprocessed rows of a consumer, in arrival order.
CREATE INDEX IF NOT EXISTS inbox_unprocessed_idx ON inbox (consumer, seq)
    WHERE processed_at IS NULL AND dead_at IS NULL;
-- "Is this row the head of its key?" for per-key order; a dead row still blocks its key.
CREATE INDEX IF NOT EXISTS inbox_ordering_idx ON inbox (consumer, ordering_key, seq)
    WHERE processed_at IS NULL AND ordering_key IS NOT NULL;
-- Retention: processed rows by age.
CREATE INDEX IF NOT EXISTS inbox_processed_idx ON inbox (processed_at)
    WHERE processed_at IS NOT NULL;
-- Dead rows, for status and alerting.
CREATE INDEX IF NOT EXISTS inbox_dead_idx ON inbox (consumer, dead_at)
    WHERE dead_at IS NOT NULL;
