-- A first attempt that succeeds (most deliveries) is kept in its delivery's row rather than
-- as an `attempts` row: one UPDATE instead of an INSERT and an UPDATE on the writer.
ALTER TABLE deliveries ADD COLUMN first_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN first_duration_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN first_status_code INTEGER;
