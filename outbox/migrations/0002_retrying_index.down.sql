DROP INDEX IF EXISTS outbox_retrying_idx;
