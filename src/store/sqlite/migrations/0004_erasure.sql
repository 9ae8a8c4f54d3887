-- Erasure: an erased event keeps its row as a tombstone (its body replaced, see
-- `store::tombstone`), so its provider delivery id still answers dedupe.
ALTER TABLE events ADD COLUMN erased_at INTEGER;
-- Deliveries gain a final status, `cancelled` (their event was erased). The unfinished ones are
-- now those whose status sorts after 'delivered' ('in_flight', 'pending', 'scheduled'; the
-- finished 'cancelled', 'dead' and 'delivered' sort before or at it): one comparison, which
-- SQLite evaluates without the temporary b-tree a list of three constants would build on every
-- INSERT and status UPDATE (see 0003).
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status > 'delivered';
-- Dead letters by their event's time (the ids are v7), for `dlq_retention_days`.
CREATE INDEX deliveries_dead_by_event ON deliveries(event_id) WHERE status = 'dead';
