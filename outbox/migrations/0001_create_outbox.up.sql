-- sidebox outbox table. Insert a row in the same transaction as your business change:
--   INSERT INTO outbox (exchange, routing_key, payload) VALUES ('orders', 'order.created', '{"id":42}'::bytea);
-- The relay publishes it to RabbitMQ and deletes it once the broker confirmed it.
-- Every statement is idempotent: this file may run again over what it made (another
-- migration tool and `sidebox migrate up`, in either order).
CREATE TABLE IF NOT EXISTS outbox (
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
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
    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    CONSTRAINT outbox_headers_object CHECK (jsonb_typeof(headers) = 'object')
);

-- The relay's claim. Unkeyed rows: due rows in order of due time, dead ones left out.
CREATE INDEX IF NOT EXISTS outbox_unkeyed_idx ON outbox (available_at, seq) WHERE ordering_key IS NULL AND dead_at IS NULL;
-- Keyed rows: the relay walks the distinct keys of live rows; the first live row of a
-- key is its head, the only one of the key that can be in flight.
CREATE INDEX IF NOT EXISTS outbox_ordering_idx ON outbox (ordering_key, seq) WHERE ordering_key IS NOT NULL AND dead_at IS NULL;
-- Dead rows: they block the later rows of their key. Small; insert never touches it.
CREATE INDEX IF NOT EXISTS outbox_dead_idx ON outbox (ordering_key, seq) WHERE dead_at IS NOT NULL;
-- When is the next delayed or retrying row due?
CREATE INDEX IF NOT EXISTS outbox_available_idx ON outbox (available_at) WHERE dead_at IS NULL;

-- Wake-up. 1 while a relay sleeps waiting for work, else 0. A sequence because setval is
-- immediately visible to every session and takes no row lock.
CREATE SEQUENCE IF NOT EXISTS outbox_wakeup MINVALUE 0 MAXVALUE 1 START 0 NO CYCLE;

-- Runs at commit (deferred) and notifies only when a relay is asleep, once per
-- transaction. A NOTIFY serialises committing transactions database-wide, so writers pay
-- it only when the relay is idle, never under load.
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

-- A constraint trigger has no IF NOT EXISTS (nor OR REPLACE).
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'outbox_wakeup' AND tgrelid = 'outbox'::regclass) THEN
        CREATE CONSTRAINT TRIGGER outbox_wakeup AFTER INSERT ON outbox
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION outbox_wakeup();
    END IF;
END
$do$;
