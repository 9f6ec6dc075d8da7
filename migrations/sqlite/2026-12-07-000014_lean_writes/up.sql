-- Writes that cost what they must (issue 25).
--
-- The key counts are written by the code that writes keys, summed per
-- transaction and written once before its commit (luna-store counts.rs),
-- not by per-row triggers: up to 21 count-row writes per key changed. The
-- counts are made again from the keys here, so that they start exact.
DROP TRIGGER keys_count_insert;
DROP TRIGGER keys_count_delete;
DROP TRIGGER keys_count_update;
DROP TRIGGER keys_time_count_insert;
DROP TRIGGER keys_time_count_delete;
DROP TRIGGER keys_time_count_update;
-- Only the triggers read it; counts.rs holds the levels' shifts.
DROP TABLE key_time_levels;

DELETE FROM key_counts;
INSERT INTO key_counts (partition_id, status, n)
    SELECT partition_id, status, COUNT(*) FROM keys GROUP BY partition_id, status;
DELETE FROM key_time_counts;
INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
    SELECT 0, 0, created_at >> 20, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5
    UNION ALL SELECT 0, 1, created_at >> 28, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5
    UNION ALL SELECT 0, 2, created_at >> 36, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5
    UNION ALL SELECT 1, 0, updated_at >> 20, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5
    UNION ALL SELECT 1, 1, updated_at >> 28, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5
    UNION ALL SELECT 1, 2, updated_at >> 36, partition_id, status, COUNT(*) FROM keys GROUP BY 3, 4, 5;

-- Indexes no query reads: every write paid for them.
DROP INDEX operations_target;
DROP INDEX audit_records_at;

-- The audit trail's sequence number as the table's rowid: a BIGINT PRIMARY
-- KEY is a second B-tree beside the rowid's, so each record wrote four index
-- entries instead of two. Every record is kept as it was (the chain hashes
-- the numbers, not the rowids).
CREATE TABLE audit_records_by_seq (
    seq INTEGER PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_records_by_seq (seq, at, username, action, target, outcome, request_id, client, previous_hash, hash)
    SELECT seq, at, username, action, target, outcome, request_id, client, previous_hash, hash
        FROM audit_records ORDER BY seq;
DROP TABLE audit_records;
ALTER TABLE audit_records_by_seq RENAME TO audit_records;
CREATE INDEX audit_records_user ON audit_records (username, seq);
