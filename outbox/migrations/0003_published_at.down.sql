-- Kept published rows would look unpublished without the column: they go first.
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX IF EXISTS outbox_published_idx;
DROP INDEX IF EXISTS outbox_unkeyed_idx;
CREATE INDEX outbox_unkeyed_idx ON outbox (available_at, seq) WHERE ordering_key IS NULL AND dead_at IS NULL;
DROP INDEX IF EXISTS outbox_ordering_idx;
CREATE INDEX outbox_ordering_idx ON outbox (ordering_key, seq) WHERE ordering_key IS NOT NULL AND dead_at IS NULL;
DROP INDEX IF EXISTS outbox_available_idx;
CREATE INDEX outbox_available_idx ON outbox (available_at) WHERE dead_at IS NULL;
DROP INDEX IF EXISTS outbox_retrying_idx;
CREATE INDEX outbox_retrying_idx ON outbox (created_at) WHERE attempts > 0 AND dead_at IS NULL;
ALTER TABLE outbox DROP COLUMN IF EXISTS published_at;
