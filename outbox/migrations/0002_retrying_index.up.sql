-- Rows that failed and wait for a retry. Small: a healthy outbox has none, and inserts
-- never enter it. It keeps status, the backlog gauges and the count of blocked keys
-- from scanning the table, whose size is the backlog.
CREATE INDEX IF NOT EXISTS outbox_retrying_idx ON outbox (created_at) WHERE attempts > 0 AND dead_at IS NULL;
