-- Pull consumers (issue 25): a delivery leased to a consumer is `in_flight` with its lease's
-- expiry as `next_attempt_at` and the consumer's name here; NULL when not leased.
ALTER TABLE deliveries ADD COLUMN lease_consumer TEXT;
