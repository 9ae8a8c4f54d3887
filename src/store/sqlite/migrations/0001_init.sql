CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    type        TEXT NOT NULL,
    action      TEXT,
    delivery_id TEXT,
    timestamp   INTEGER NOT NULL,
    filtered    INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE UNIQUE INDEX events_dedupe ON events(source, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX events_by_source ON events(source, id);
CREATE INDEX events_by_type ON events(type, id);

CREATE TABLE deliveries (
    id              BLOB PRIMARY KEY,
    event_id        BLOB NOT NULL,
    agent_id        TEXT NOT NULL,
    route_id        TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    retry_base      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    body            TEXT,
    retry_policy    TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_by_event ON deliveries(event_id);
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status IN ('pending', 'in_flight', 'scheduled');
CREATE INDEX deliveries_by_agent ON deliveries(agent_id, status);
CREATE INDEX deliveries_dead ON deliveries(id) WHERE status = 'dead';

CREATE TABLE attempts (
    delivery_id   BLOB NOT NULL,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- Stream-only agents' routed events (push agents' are their deliveries), for stream resume.
CREATE TABLE streamed (
    agent_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    body     TEXT,
    PRIMARY KEY (agent_id, event_id)
) WITHOUT ROWID;
CREATE INDEX streamed_by_event ON streamed(event_id);
CREATE INDEX deliveries_by_agent_event ON deliveries(agent_id, event_id);

CREATE TABLE rollups (
    minute INTEGER NOT NULL,
    dim    TEXT NOT NULL,
    metric TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (minute, dim, metric)
) WITHOUT ROWID;

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    client_ip TEXT NOT NULL,
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    status    INTEGER NOT NULL,
    action    TEXT NOT NULL,
    target_id TEXT
);

CREATE TABLE rules (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
