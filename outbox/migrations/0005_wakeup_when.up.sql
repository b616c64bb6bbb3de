-- The wake-up trigger reads the flag as each row is inserted and queues its
-- commit-time check only while the flag is up (a relay sleeps). While a relay works
-- or streams, an insert pays one read of the flag and nothing at commit: no deferred
-- trigger event, no function call. A row inserted while the flag was down whose
-- transaction commits after it went up sends no NOTIFY; the relay's claim after
-- raising the flag, its settle claim and its poll find it.
-- pg_sequence_last_value reads the sequence without a query (NULL until the first
-- setval); the writer needs SELECT on the sequence, as before.
DROP TRIGGER IF EXISTS outbox_wakeup ON outbox;
CREATE CONSTRAINT TRIGGER outbox_wakeup AFTER INSERT ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (pg_catalog.pg_sequence_last_value('outbox_wakeup'::regclass) = 1)
    EXECUTE FUNCTION outbox_wakeup();
