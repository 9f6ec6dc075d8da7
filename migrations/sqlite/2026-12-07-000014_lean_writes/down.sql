-- Back to migration 13's schema: the audit trail keyed by a BIGINT, the
-- two indexes, and the count triggers of migrations 3 and 9 (the counts the
-- code kept are exact, so the triggers carry on from them).
CREATE TABLE audit_records_by_seq (
    seq BIGINT PRIMARY KEY NOT NULL,
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
CREATE INDEX audit_records_at ON audit_records (at);
CREATE INDEX audit_records_user ON audit_records (username, seq);
CREATE INDEX operations_target ON operations (target_id);

CREATE TABLE key_time_levels (
    level SMALLINT PRIMARY KEY NOT NULL,
    shift SMALLINT NOT NULL
);
INSERT INTO key_time_levels (level, shift) VALUES (0, 20), (1, 28), (2, 36);

CREATE TRIGGER keys_count_insert AFTER INSERT ON keys
BEGIN
    INSERT INTO key_counts (partition_id, status, n) VALUES (NEW.partition_id, NEW.status, 1)
        ON CONFLICT (partition_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER keys_count_delete AFTER DELETE ON keys
BEGIN
    UPDATE key_counts SET n = n - 1 WHERE partition_id = OLD.partition_id AND status = OLD.status;
END;

CREATE TRIGGER keys_count_update AFTER UPDATE OF partition_id, status ON keys
    WHEN OLD.partition_id IS NOT NEW.partition_id OR OLD.status IS NOT NEW.status
BEGIN
    UPDATE key_counts SET n = n - 1 WHERE partition_id = OLD.partition_id AND status = OLD.status;
    INSERT INTO key_counts (partition_id, status, n) VALUES (NEW.partition_id, NEW.status, 1)
        ON CONFLICT (partition_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER keys_time_count_insert AFTER INSERT ON keys
BEGIN
    INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
        SELECT 0, level, NEW.created_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
        UNION ALL
        SELECT 1, level, NEW.updated_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
            WHERE true
        ON CONFLICT (field, level, bucket, partition_id, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER keys_time_count_delete AFTER DELETE ON keys
BEGIN
    UPDATE key_time_counts SET n = n - 1
        WHERE field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
    UPDATE key_time_counts SET n = n - 1
        WHERE field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
    DELETE FROM key_time_counts
        WHERE n = 0 AND field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
    DELETE FROM key_time_counts
        WHERE n = 0 AND field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
END;

CREATE TRIGGER keys_time_count_update AFTER UPDATE OF partition_id, status, created_at, updated_at ON keys
    WHEN OLD.partition_id IS NOT NEW.partition_id OR OLD.status IS NOT NEW.status
        OR OLD.created_at IS NOT NEW.created_at OR OLD.updated_at IS NOT NEW.updated_at
BEGIN
    UPDATE key_time_counts SET n = n - 1
        WHERE field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
    UPDATE key_time_counts SET n = n - 1
        WHERE field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
    DELETE FROM key_time_counts
        WHERE n = 0 AND field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
    DELETE FROM key_time_counts
        WHERE n = 0 AND field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
            AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
    INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
        SELECT 0, level, NEW.created_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
        UNION ALL
        SELECT 1, level, NEW.updated_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
            WHERE true
        ON CONFLICT (field, level, bucket, partition_id, status) DO UPDATE SET n = n + 1;
END;
