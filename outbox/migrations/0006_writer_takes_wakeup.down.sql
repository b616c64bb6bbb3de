-- Back to migrations 0001 and 0005: notifying writers leave the flag up.
CREATE OR REPLACE FUNCTION outbox_wakeup() RETURNS trigger LANGUAGE plpgsql
SECURITY INVOKER SET search_path FROM CURRENT AS $$
BEGIN
    IF (SELECT last_value FROM outbox_wakeup) = 1
       AND coalesce(current_setting('sidebox.outbox_notified', true), '') = '' THEN
        PERFORM set_config('sidebox.outbox_notified', 'yes', true);
        PERFORM pg_notify('sidebox_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

GRANT EXECUTE ON FUNCTION outbox_wakeup() TO PUBLIC;

-- A taken flag (2 or more) reads as up again. The sequence keeps its larger MAXVALUE:
-- lowering it would fail while a writer still running the function of 0006 takes the
-- flag, and make such a writer's nextval fail once this commits.
SELECT setval('outbox_wakeup', 1) WHERE pg_sequence_last_value('outbox_wakeup'::regclass) > 1;
