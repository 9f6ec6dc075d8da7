DROP INDEX keys_status_updated;
DROP INDEX keys_status_created;
DROP INDEX keys_partition_status_updated;
DROP INDEX keys_partition_status_created;
DROP INDEX keys_partition_updated;
DROP INDEX keys_partition_created;
CREATE INDEX keys_partition ON keys (partition_id, created_at);
CREATE INDEX keys_status ON keys (status, created_at);
