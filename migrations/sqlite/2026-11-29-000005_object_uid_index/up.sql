-- A partition's records by the object they name: a refresh recording objects
-- while its scan goes on asks, batch by batch, which of them have a record.
CREATE INDEX keys_partition_object ON keys (partition_id, object_uid);
