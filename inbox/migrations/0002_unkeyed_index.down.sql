DROP INDEX IF EXISTS inbox_unkeyed_idx;
