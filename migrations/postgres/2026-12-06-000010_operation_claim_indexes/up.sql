-- A claim reads the queued operations and the running ones whose lease ran
-- out apart, each in index order and stopped at its first row
-- (repo/operations.rs): the queued in (created_at, id) order, the lapsed by
-- their lease's end (a few among many running or parked).
DROP INDEX operations_claim;
CREATE INDEX operations_claim ON operations (state, created_at, id);
CREATE INDEX operations_lease ON operations (state, lease_expires_at);
