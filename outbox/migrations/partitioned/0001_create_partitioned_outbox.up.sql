-- sidebox outbox table, partitioned by day (SIDEBOX_OUTBOX_PARTITIONS=daily): the
-- variant for very high volume. The same columns, defaults and claim indexes as the
-- plain table after its migrations 0001-0005, but PARTITION BY RANGE (created_at):
-- the relay keeps every published row (published_at set) and drops a day's partition
-- once it is older than SIDEBOX_OUTBOX_RETENTION and holds no unpublished row, instead
-- of deleting rows one by one. It creates the partitions of today and the next days
-- itself; rows of a day without a partition land in outbox_default.
--   INSERT INTO outbox (exchange, routing_key, payload) VALUES ('orders', 'order.created', '{"id":42}'::bytea);
-- The primary key is (id, created_at), as a partitioned table needs: id is unique per
-- partition (per day) only. The default gen_random_uuid() ids never collide; a service
-- that sets its own ids keeps them unique itself.
-- Every statement is idempotent: this file may run again over what it made (another
-- migration tool and `sidebox migrate up`, in either order).
-- seq: a sequence default rather than an identity column, which partitioned tables
-- take only from PostgreSQL 17 on.
CREATE SEQUENCE IF NOT EXISTS outbox_seq_seq AS bigint;
CREATE TABLE IF NOT EXISTS outbox (
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    seq          bigint      NOT NULL DEFAULT nextval('outbox_seq_seq'),
    exchange     text        NOT NULL DEFAULT '',
    routing_key  text        NOT NULL DEFAULT '',
    payload      bytea       NOT NULL,
    message_type text,
    content_type text        NOT NULL DEFAULT 'application/json',
    headers      jsonb       NOT NULL DEFAULT '{}',
    ordering_key text,
    available_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    dead_at      timestamptz,
    published_at timestamptz,
    CONSTRAINT outbox_pkey PRIMARY KEY (id, created_at),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE outbox_seq_seq OWNED BY outbox.seq;

-- Rows of a day that has no partition yet. The relay creates each day's partition
-- days ahead, so this stays empty; it keeps an insert from failing meanwhile.
CREATE TABLE IF NOT EXISTS outbox_default PARTITION OF outbox DEFAULT;

-- The relay's claim, as in the plain table: partial indexes that hold only the rows
-- still to publish, so that kept rows cost the claim nothing. Each partition gets its
-- own copy; the claim reads each partition's (docs/DESIGN.md, "Retention").
CREATE INDEX IF NOT EXISTS outbox_unkeyed_idx ON outbox (available_at, seq)
    WHERE ordering_key IS NULL AND dead_at IS NULL AND published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_ordering_idx ON outbox (ordering_key, seq)
    WHERE ordering_key IS NOT NULL AND dead_at IS NULL AND published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_dead_idx ON outbox (ordering_key, seq) WHERE dead_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_available_idx ON outbox (available_at)
    WHERE dead_at IS NULL AND published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_retrying_idx ON outbox (created_at)
    WHERE attempts > 0 AND dead_at IS NULL AND published_at IS NULL;
-- Kept rows by age, for `sidebox replay --since` and the partition drop.
CREATE INDEX IF NOT EXISTS outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Heartbeats of the relays of this table, for `sidebox status` (as migration 0004).
CREATE TABLE IF NOT EXISTS outbox_relays (
    instance              text        NOT NULL,
    seen_at               timestamptz NOT NULL DEFAULT now(),
    published_last_minute bigint      NOT NULL DEFAULT 0,
    CONSTRAINT outbox_relays_pkey PRIMARY KEY (instance)
);

-- Wake-up, as migrations 0001 and 0005: 1 while a relay sleeps waiting for work.
CREATE SEQUENCE IF NOT EXISTS outbox_wakeup MINVALUE 0 MAXVALUE 1 START 0 NO CYCLE;

CREATE OR REPLACE FUNCTION outbox_wakeup() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF (SELECT last_value FROM outbox_wakeup) = 1
       AND coalesce(current_setting('sidebox.outbox_notified', true), '') = '' THEN
        PERFORM set_config('sidebox.outbox_notified', 'yes', true);
        PERFORM pg_notify('sidebox_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- A constraint trigger has no IF NOT EXISTS (nor OR REPLACE). On a partitioned table
-- every partition gets a clone of it.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_wakeup' AND tgrelid = 'outbox'::regclass) THEN
        CREATE CONSTRAINT TRIGGER outbox_wakeup AFTER INSERT ON outbox
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (pg_catalog.pg_sequence_last_value('outbox_wakeup'::regclass) = 1)
            EXECUTE FUNCTION outbox_wakeup();
    END IF;
END
$do$;
