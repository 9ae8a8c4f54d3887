-- Erasure: an erased event keeps its row as a tombstone (its body replaced, see
-- `store::tombstone`), so its provider delivery id still answers dedupe. Deliveries gain the
-- final status `cancelled` (outside the unfinished index's list, so nothing else changes).
ALTER TABLE events ADD COLUMN erased_at bigint;
-- Dead letters by their event's time (the ids are v7), for `dlq_retention_days`.
CREATE INDEX deliveries_dead_by_event ON deliveries (event_id) WHERE status = 'dead';
