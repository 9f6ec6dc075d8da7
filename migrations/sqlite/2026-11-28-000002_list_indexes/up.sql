-- Indexes shaped like the key lists clients ask for most: equality filters
-- first, then the sort column, then id (the tie-breaker, sorted the same way),
-- so one index scan serves filter, order, skip and limit, and the count.
DROP INDEX keys_partition;
DROP INDEX keys_status;
DROP INDEX keys_created;
DROP INDEX keys_updated;
CREATE INDEX keys_created ON keys (created_at, id);
CREATE INDEX keys_updated ON keys (updated_at, id);
CREATE INDEX keys_partition_created ON keys (partition_id, created_at, id);
CREATE INDEX keys_partition_updated ON keys (partition_id, updated_at, id);
CREATE INDEX keys_partition_status_created ON keys (partition_id, status, created_at, id);
CREATE INDEX keys_partition_status_updated ON keys (partition_id, status, updated_at, id);
CREATE INDEX keys_status_created ON keys (status, created_at, id);
CREATE INDEX keys_status_updated ON keys (status, updated_at, id);
