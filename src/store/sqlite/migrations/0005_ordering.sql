-- Ordered and coalesced delivery (docs/delivery.md). A delivery may carry its route's ordering
-- key value (and whether a dead letter holds the key) and its coalescing key value with the
-- window and longest wait; a superseded delivery names the one that superseded it, and the
-- delivery that carries a burst counts and lists (at most 100 event ids) what it superseded,
-- from when (`coalesce_since`: the first superseded delivery's creation).
ALTER TABLE deliveries ADD COLUMN ordering_key TEXT;
ALTER TABLE deliveries ADD COLUMN ordering_hold INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN coalesce_key TEXT;
ALTER TABLE deliveries ADD COLUMN coalesce_window_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN coalesce_max_wait_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN superseded_by BLOB;
ALTER TABLE deliveries ADD COLUMN superseded_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN superseded_ids TEXT;
ALTER TABLE deliveries ADD COLUMN coalesce_since INTEGER;
-- A new final status, `superseded`, sorts after 'scheduled': the unfinished deliveries are now
-- those between 'in_flight' and 'scheduled' ('in_flight', 'pending', 'scheduled'), still two
-- comparisons rather than a list (see 0003 and 0004).
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status BETWEEN 'in_flight' AND 'scheduled';
-- Dead letters that hold their key, read at start.
CREATE INDEX deliveries_held ON deliveries(agent_id, ordering_key)
    WHERE status = 'dead' AND ordering_hold = 1;
