-- A first attempt that succeeds (most deliveries) is kept in its delivery's row rather than as
-- an `attempts` row: the outcome is one UPDATE instead of an INSERT and an UPDATE (as on SQLite).
ALTER TABLE deliveries
    ADD COLUMN IF NOT EXISTS first_started_at bigint,
    ADD COLUMN IF NOT EXISTS first_duration_ms bigint,
    ADD COLUMN IF NOT EXISTS first_status_code integer;
