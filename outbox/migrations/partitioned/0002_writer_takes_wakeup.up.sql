-- The first writer to commit while a relay sleeps takes the wake-up flag: it moves the
-- flag from 1 (a relay sleeps) to 2 and more (a writer woke it) and sends the one
-- NOTIFY of the idle spell. Writers that commit after it read 2 and send none, so a
-- burst that lands on a sleeping relay costs one NOTIFY (NOTIFY serialises committing
-- transactions database-wide) instead of one per transaction until the relay lowers the
-- flag. nextval hands out 2 exactly once per raise, so of writers committing together
-- one notifies. The relay raises the flag to 1 again when it has caught up.
-- SECURITY DEFINER: writers keep only SELECT on the sequence (roles.sql.example); the
-- function runs as the migration's owner, with the search_path it was created with.
-- Nobody needs to call it (a trigger fires without EXECUTE): it is revoked from PUBLIC,
-- so that no other table's trigger can run it as the owner.
-- Upgrade the sidecars before this migration: an older relay does not read 2 as a taken
-- flag, and wakes up only by its poll until it raises the flag again.
ALTER SEQUENCE outbox_wakeup MAXVALUE 9223372036854775807;

CREATE OR REPLACE FUNCTION outbox_wakeup() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF pg_catalog.pg_sequence_last_value('outbox_wakeup'::regclass) = 1
       AND pg_catalog.nextval('outbox_wakeup'::regclass) = 2 THEN
        PERFORM pg_catalog.pg_notify('sidebox_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION outbox_wakeup() FROM PUBLIC;
