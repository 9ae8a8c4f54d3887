-- Ordered and coalesced delivery (docs/delivery.md). A delivery may carry its route's ordering
-- key value (and whether a dead letter holds the key) and its coalescing key value with the
-- window and longest wait; a superseded delivery names the one that superseded it, and the
-- delivery that carries a burst counts and lists (at most 100 event ids) what it superseded,
-- from when (`coalesce_since`: the first superseded delivery's creation). `superseded` is a new
-- final status, outside the unfinished index's list.
ALTER TABLE deliveries ADD COLUMN ordering_key text COLLATE "C";
ALTER TABLE deliveries ADD COLUMN ordering_hold boolean NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN coalesce_key text;
ALTER TABLE deliveries ADD COLUMN coalesce_window_ms bigint;
ALTER TABLE deliveries ADD COLUMN coalesce_max_wait_ms bigint;
ALTER TABLE deliveries ADD COLUMN superseded_by uuid;
ALTER TABLE deliveries ADD COLUMN superseded_count bigint NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN superseded_ids text;
ALTER TABLE deliveries ADD COLUMN coalesce_since bigint;
-- The unfinished deliveries of one key, in event order (the key's head across nodes), and the
-- dead letters that hold theirs.
CREATE INDEX deliveries_by_key ON deliveries (agent_id, ordering_key, event_id)
    WHERE ordering_key IS NOT NULL AND status IN ('pending', 'in_flight', 'scheduled');
CREATE INDEX deliveries_held ON deliveries (agent_id, ordering_key)
    WHERE status = 'dead' AND ordering_hold;
-- Which delivery holds each key on several nodes: the key is free again once that delivery is
-- no longer unfinished, or once its node is no longer live.
CREATE TABLE ordering_locks (
    agent_id     text COLLATE "C" NOT NULL,
    ordering_key text COLLATE "C" NOT NULL,
    delivery_id  uuid NOT NULL,
    node         uuid NOT NULL,
    PRIMARY KEY (agent_id, ordering_key)
);
