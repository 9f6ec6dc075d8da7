-- Migration 8's update and delete triggers found the count rows to change
-- with `(field, level, bucket, partition_id, status) IN (SELECT ... UNION ALL
-- SELECT ...)`, which SQLite runs as a scan of the whole of key_time_counts
-- (EXPLAIN QUERY PLAN: SCAN key_time_counts), twice per key changed: one row
-- per second that holds a key, so every key update grew dearer as the table
-- did (681 us an outcome's key update in the API benchmark). One statement
-- per timestamp field, with the field, partition and status equal and
-- (level, bucket) IN the levels, searches the primary key instead.

DROP TRIGGER keys_time_count_update;
DROP TRIGGER keys_time_count_delete;

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
