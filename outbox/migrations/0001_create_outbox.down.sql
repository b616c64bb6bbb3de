DROP TRIGGER IF EXISTS outbox_wakeup ON outbox;
DROP FUNCTION IF EXISTS outbox_wakeup();
DROP TABLE IF EXISTS outbox;
DROP SEQUENCE IF EXISTS outbox_wakeup;
