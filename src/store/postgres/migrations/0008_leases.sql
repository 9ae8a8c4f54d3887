-- Pull consumers (issue 25): a delivery leased to a consumer is `in_flight` with its lease's
-- expiry as `next_attempt_at` and the consumer's name here; NULL when not leased. Pull
-- deliveries are found by agent when a node takes waiting ones from another node.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS lease_consumer text;
