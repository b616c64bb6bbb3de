-- Drops the table with every partition and the rows they keep.
DROP TRIGGER IF EXISTS outbox_wakeup ON outbox;
DROP FUNCTION IF EXISTS outbox_wakeup();
DROP TABLE IF EXISTS outbox_relays;
DROP TABLE IF EXISTS outbox;
DROP SEQUENCE IF EXISTS outbox_seq_seq;
DROP SEQUENCE IF EXISTS outbox_wakeup;
