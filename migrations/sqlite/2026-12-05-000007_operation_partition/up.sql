-- The partition whose tokens a key operation works on (none for a job, and
-- for operations queued before this column): a runner claims at most
-- --token-concurrency operations of one partition at a time.
ALTER TABLE operations ADD COLUMN partition_id TEXT;
