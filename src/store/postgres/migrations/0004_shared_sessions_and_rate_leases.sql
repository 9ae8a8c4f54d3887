-- What several nodes share besides deliveries (issue #27).

-- Dashboard sessions, so that a user signed in on one node is signed in on every node. Only the
-- SHA-256 of a session's token is kept (the token itself lives in the browser's cookie alone);
-- `expires_at` is the database's clock (ms), like the node leases.
CREATE TABLE dashboard_sessions (
    hash       bytea PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);

-- Rate limits that hold across the nodes exactly (the cluster never admits more than a key's
-- limit). A node leases a share of what a key has left (`rate_acquire`, one statement that
-- locks the key's counter row), spends it in memory without a round trip per request, and gives
-- back what it did not spend (with its next lease, or when it stops using the key). The
-- transaction that stores a webhook admitted under a lease also records the spend in
-- `rate_spends`, so when a lease expires without being given back (its node was killed), what
-- it really spent is known and the rest comes back. `rate_hits` (the hit exchange this replaces)
-- stays for nodes of an older version during a rolling upgrade.
CREATE TABLE rate_counters (
    key          text COLLATE "C" PRIMARY KEY,
    -- The quota the counters were kept under: a different one starts them afresh.
    strategy     text NOT NULL,
    lim          bigint NOT NULL,
    window_ms    bigint NOT NULL,
    burst        bigint NOT NULL,
    -- Fixed and sliding window: the current aligned window, and what was leased in it and in
    -- the one before (less what leases gave back unspent).
    window_start bigint NOT NULL DEFAULT 0,
    prev         bigint NOT NULL DEFAULT 0,
    curr         bigint NOT NULL DEFAULT 0,
    -- Token bucket: GCRA's theoretical arrival time in ms × lim (exact: never rounded), and the
    -- tokens leased and not yet settled, which hold the bucket's capacity down until they are.
    tat          numeric NOT NULL DEFAULT 0,
    outstanding  bigint NOT NULL DEFAULT 0,
    updated_at   bigint NOT NULL
);
CREATE INDEX rate_counters_by_time ON rate_counters (updated_at);

CREATE TABLE rate_leases (
    id           uuid PRIMARY KEY,
    key          text COLLATE "C" NOT NULL,
    node         uuid NOT NULL,
    window_start bigint NOT NULL,
    granted      bigint NOT NULL,
    expires_at   bigint NOT NULL
);
CREATE INDEX rate_leases_by_key ON rate_leases (key);
CREATE INDEX rate_leases_by_expiry ON rate_leases (expires_at);

-- Webhooks stored under a lease, by the group commit (append-only: a commit never waits on a
-- lease's row lock, and so never deadlocks with a node settling leases).
CREATE TABLE rate_spends (
    lease uuid NOT NULL,
    spent bigint NOT NULL
);
CREATE INDEX rate_spends_by_lease ON rate_spends (lease);

-- Gives a lease's unspent part back to its key's counters (the caller holds the counter row).
-- Token bucket: the lease's tokens stop holding the capacity down, and those it spent are
-- charged now (later than they were spent, so the bucket refills later: never too early).
CREATE FUNCTION rate_settle(p_key text, p_window_start bigint, p_granted bigint,
                            p_spent bigint, p_now bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    used   bigint := least(greatest(p_spent, 0), p_granted);
    unused bigint := p_granted - least(greatest(p_spent, 0), p_granted);
BEGIN
    UPDATE rate_counters SET
        outstanding = CASE WHEN strategy = 'token_bucket'
                           THEN greatest(outstanding - p_granted, 0) ELSE outstanding END,
        tat = CASE WHEN strategy = 'token_bucket'
                   THEN greatest(tat, p_now::numeric * lim) + used::numeric * window_ms
                   ELSE tat END,
        curr = CASE WHEN strategy <> 'token_bucket' AND window_start = p_window_start
                    THEN greatest(curr - unused, 0) ELSE curr END,
        prev = CASE WHEN strategy = 'sliding_window' AND window_start = p_window_start + window_ms
                    THEN greatest(prev - unused, 0) ELSE prev END
    WHERE key = p_key;
END $$;

-- Settles `p_return` (given back by its node, which spent `p_return_spent` of it) and, with
-- `p_expired`, the key's expired leases: a lease counts as spent what its node says or what was
-- stored under it, whichever is more. The caller holds the counter row.
CREATE FUNCTION rate_reclaim(p_key text, p_now bigint, p_return uuid, p_return_spent bigint,
                             p_expired boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    l record;
    stored bigint;
BEGIN
    FOR l IN SELECT r.id, r.window_start, r.granted FROM rate_leases r
             WHERE r.key = p_key AND ((p_expired AND r.expires_at <= p_now) OR r.id = p_return)
             ORDER BY r.id FOR UPDATE LOOP
        SELECT coalesce(sum(s.spent), 0) INTO stored FROM rate_spends s WHERE s.lease = l.id;
        PERFORM rate_settle(p_key, l.window_start, l.granted,
            CASE WHEN l.id = p_return THEN greatest(stored, p_return_spent) ELSE stored END,
            p_now);
        DELETE FROM rate_spends WHERE lease = l.id;
        DELETE FROM rate_leases WHERE id = l.id;
    END LOOP;
END $$;

-- Leases up to `p_want` of what the key has left under its quota, as lease `p_lease` of node
-- `p_node` lasting `p_lease_ms`, after settling `p_return` and the key's expired leases. The
-- arithmetic is the single node's (src/ratelimit), on counts of leased units: a unit is leased
-- only if a request at this instant would be allowed, and a request admitted later under it
-- would be too (sliding window: the previous window's weight only falls; token bucket: leased
-- tokens hold the capacity down until settled). Returns what was granted and the counters after.
CREATE FUNCTION rate_acquire(
    p_key text, p_strategy text, p_limit bigint, p_window bigint, p_burst bigint,
    p_want bigint, p_lease uuid, p_node uuid, p_lease_ms bigint,
    p_return uuid, p_return_spent bigint,
    OUT granted bigint, OUT now_ms bigint, OUT window_start bigint, OUT prev bigint,
    OUT curr bigint, OUT tat_ms bigint, OUT tat_frac bigint, OUT outstanding bigint)
LANGUAGE plpgsql AS $$
DECLARE
    c rate_counters%ROWTYPE;
    ws bigint;
    avail numeric;
BEGIN
    now_ms := db_now_ms();
    INSERT INTO rate_counters (key, strategy, lim, window_ms, burst, updated_at)
    VALUES (p_key, p_strategy, p_limit, p_window, p_burst, now_ms)
    ON CONFLICT (key) DO NOTHING;
    SELECT * INTO c FROM rate_counters WHERE key = p_key FOR UPDATE;
    IF (c.strategy, c.lim, c.window_ms, c.burst)
       IS DISTINCT FROM (p_strategy, p_limit, p_window, p_burst) THEN
        -- The key's limit changed: it starts afresh, as on one node; the old leases lapse.
        DELETE FROM rate_spends WHERE lease IN (SELECT id FROM rate_leases WHERE key = p_key);
        DELETE FROM rate_leases WHERE key = p_key;
        UPDATE rate_counters SET strategy = p_strategy, lim = p_limit, window_ms = p_window,
            burst = p_burst, window_start = 0, prev = 0, curr = 0, tat = 0, outstanding = 0
        WHERE key = p_key;
    ELSE
        PERFORM rate_reclaim(p_key, now_ms, p_return, p_return_spent, true);
    END IF;
    SELECT * INTO c FROM rate_counters WHERE key = p_key;
    IF p_strategy = 'token_bucket' THEN
        avail := floor(((p_burst - c.outstanding)::numeric * p_window
                        - greatest(c.tat - now_ms::numeric * p_limit, 0)) / p_window);
    ELSE
        ws := now_ms - now_ms % p_window;
        IF c.window_start <> ws THEN
            c.prev := CASE WHEN ws - c.window_start = p_window THEN c.curr ELSE 0 END;
            c.curr := 0;
            c.window_start := ws;
        END IF;
        IF p_strategy = 'fixed_window' THEN
            avail := p_limit - c.curr;
        ELSE
            -- Request i of the window (from 0) passes while prev·(W − e) + i·W < limit·W.
            avail := ceil((p_limit::numeric * p_window
                           - c.prev::numeric * (p_window - (now_ms - ws))) / p_window) - c.curr;
        END IF;
    END IF;
    granted := greatest(least(p_want::numeric, avail), 0)::bigint;
    IF p_strategy = 'token_bucket' THEN
        c.outstanding := c.outstanding + granted;
    ELSE
        c.curr := c.curr + granted;
    END IF;
    UPDATE rate_counters r SET window_start = c.window_start, prev = c.prev, curr = c.curr,
        outstanding = c.outstanding, updated_at = now_ms
    WHERE r.key = p_key;
    IF granted > 0 THEN
        INSERT INTO rate_leases (id, key, node, window_start, granted, expires_at)
        VALUES (p_lease, p_key, p_node, c.window_start, granted, now_ms + p_lease_ms);
    END IF;
    window_start := c.window_start;
    prev := c.prev;
    curr := c.curr;
    outstanding := c.outstanding;
    tat_ms := floor(c.tat / p_limit)::bigint;
    tat_frac := (c.tat - floor(c.tat / p_limit) * p_limit)::bigint;
END $$;

-- Gives leases back (a node stopped using a key, or is stopping): each counts as spent what its
-- node says or what was stored under it, whichever is more. Counter rows are taken in key
-- order. How many leases were still there to settle.
CREATE FUNCTION rate_release(p_ids uuid[], p_spent bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := db_now_ms();
    k text;
    l record;
    n integer := 0;
BEGIN
    FOR k IN SELECT DISTINCT r.key FROM rate_leases r WHERE r.id = ANY(p_ids) ORDER BY 1 LOOP
        PERFORM 1 FROM rate_counters WHERE key = k FOR UPDATE;
        FOR l IN SELECT r.id, s.spent FROM rate_leases r
                 JOIN UNNEST(p_ids, p_spent) AS s(id, spent) ON s.id = r.id
                 WHERE r.key = k ORDER BY r.id LOOP
            PERFORM rate_reclaim(k, now_ms, l.id, l.spent, false);
            n := n + 1;
        END LOOP;
    END LOOP;
    RETURN n;
END $$;

-- Upkeep, by one node at a time: settles the expired leases of keys nobody has asked for since,
-- then forgets counters that decide exactly as fresh ones would, spends of leases already
-- settled, and old exchange rows.
CREATE FUNCTION rate_upkeep() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := db_now_ms();
    k text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1919251317, 1) THEN
        RETURN;
    END IF;
    FOR k IN SELECT DISTINCT key FROM rate_leases WHERE expires_at <= now_ms
             ORDER BY 1 LIMIT 1000 LOOP
        PERFORM 1 FROM rate_counters WHERE key = k FOR UPDATE;
        PERFORM rate_reclaim(k, now_ms, NULL, 0, true);
    END LOOP;
    DELETE FROM rate_counters WHERE key IN (
        SELECT c.key FROM rate_counters c
        WHERE c.updated_at < now_ms - 1000
          AND NOT EXISTS (SELECT 1 FROM rate_leases l WHERE l.key = c.key)
          AND CASE WHEN c.strategy = 'token_bucket'
                   THEN c.outstanding = 0 AND c.tat <= now_ms::numeric * c.lim
                   ELSE c.window_start + 2 * c.window_ms <= now_ms END
        ORDER BY c.updated_at LIMIT 10000);
    DELETE FROM rate_spends s
    WHERE NOT EXISTS (SELECT 1 FROM rate_leases l WHERE l.id = s.lease);
    DELETE FROM rate_hits WHERE updated_at < now_ms - 3600000;
END $$;
