ALTER TABLE operations DROP COLUMN partition_id;
