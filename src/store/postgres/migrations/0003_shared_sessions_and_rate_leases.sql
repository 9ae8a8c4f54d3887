-- What several nodes share besides deliveries (issue #27).

-- Dashboard sessions, so that a user signed in on one node is signed in on every node. Only the
-- SHA-256 of a session's token is kept (the token itself lives in the browser's cookie alone);
-- `expires_at` is the database's clock (ms), like the node leases.
CREATE TABLE dashboard_sessions (
    hash       bytea PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
