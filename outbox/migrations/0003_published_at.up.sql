-- Audit retention (SIDEBOX_OUTBOX_RETENTION above 0): instead of deleting a row once
-- the broker confirmed it, the relay sets published_at and the row is kept until the
-- retention window has passed, then purged in small batches. With the default
-- (delete on confirm) published_at stays NULL.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS published_at timestamptz;

-- The claim's indexes leave published rows out, so that a million kept rows cost the
-- claim nothing: each is rebuilt with "published_at IS NULL" in its predicate (the
-- claim states it too). On a large outbox this takes a while and blocks writers
-- meanwhile: apply it when the table is small.
DROP INDEX IF EXISTS outbox_unkeyed_idx;
CREATE INDEX outbox_unkeyed_idx ON outbox (available_at, seq)
    WHERE ordering_key IS NULL AND dead_at IS NULL AND published_at IS NULL;
DROP INDEX IF EXISTS outbox_ordering_idx;
CREATE INDEX outbox_ordering_idx ON outbox (ordering_key, seq)
    WHERE ordering_key IS NOT NULL AND dead_at IS NULL AND published_at IS NULL;
DROP INDEX IF EXISTS outbox_available_idx;
CREATE INDEX outbox_available_idx ON outbox (available_at)
    WHERE dead_at IS NULL AND published_at IS NULL;
DROP INDEX IF EXISTS outbox_retrying_idx;
CREATE INDEX outbox_retrying_idx ON outbox (created_at)
    WHERE attempts > 0 AND dead_at IS NULL AND published_at IS NULL;

-- Kept rows by age, for the purge and for `sidebox replay --since`.
CREATE INDEX IF NOT EXISTS outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
