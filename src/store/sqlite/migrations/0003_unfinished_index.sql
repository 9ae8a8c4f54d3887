-- The same rows as before (status is one of five values), with a predicate SQLite evaluates by
-- comparisons: an `IN` list of three or more constants builds a temporary b-tree each time it
-- is evaluated, i.e. for every INSERT into and every status UPDATE of `deliveries` (twice for an
-- UPDATE: old and new row). That was a quarter of the router's CPU while draining deliveries.
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status NOT IN ('delivered', 'dead');
