-- Heartbeats of the relays of this table, for `sidebox status`: each relay instance
-- upserts its row every 10 seconds with the rows it published over the last minute,
-- and deletes it when it stops. Rows older than an hour (a killed relay) are removed
-- by the relays. A handful of rows, never on a writer's path.
CREATE TABLE IF NOT EXISTS outbox_relays (
    instance              text        NOT NULL,
    seen_at               timestamptz NOT NULL DEFAULT now(),
    published_last_minute bigint      NOT NULL DEFAULT 0,
    CONSTRAINT outbox_relays_pkey PRIMARY KEY (instance)
);
