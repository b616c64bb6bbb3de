-- Due rows without an ordering key, for an ordered processor: its claim walks the keys in
-- inbox_ordering_idx and takes these rows from here, so that neither part reads through
-- the other's backlog. Keyed rows never enter it.
-- The build reads the whole table and holds off writers while it runs. On a large, busy
-- table create it first without blocking them, with the same definition:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS inbox_unkeyed_idx ON inbox (consumer, available_at, seq)
--       WHERE processed_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL;
-- and this step then finds it and does nothing.
CREATE INDEX IF NOT EXISTS inbox_unkeyed_idx ON inbox (consumer, available_at, seq)
    WHERE processed_at IS NULL AND dead_at IS NULL AND ordering_key IS NULL;
