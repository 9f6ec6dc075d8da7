-- Migration 8's triggers again.
DROP TRIGGER keys_time_count_update;
DROP TRIGGER keys_time_count_delete;

CREATE TRIGGER keys_time_count_delete AFTER DELETE ON keys
BEGIN
    UPDATE key_time_counts SET n = n - 1
        WHERE (field, level, bucket, partition_id, status) IN (
            SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
            UNION ALL
            SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
    -- A bucket left empty goes, or the table would keep a row for every
    -- second that ever had a write.
    DELETE FROM key_time_counts WHERE n = 0 AND (field, level, bucket, partition_id, status) IN (
        SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
        UNION ALL
        SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
END;

CREATE TRIGGER keys_time_count_update AFTER UPDATE OF partition_id, status, created_at, updated_at ON keys
    WHEN OLD.partition_id IS NOT NEW.partition_id OR OLD.status IS NOT NEW.status
        OR OLD.created_at IS NOT NEW.created_at OR OLD.updated_at IS NOT NEW.updated_at
BEGIN
    UPDATE key_time_counts SET n = n - 1
        WHERE (field, level, bucket, partition_id, status) IN (
            SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
            UNION ALL
            SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
    -- A bucket left empty goes, or the table would keep a row for every
    -- second that ever had a write.
    DELETE FROM key_time_counts WHERE n = 0 AND (field, level, bucket, partition_id, status) IN (
        SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
        UNION ALL
        SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
    INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
        SELECT 0, level, NEW.created_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
        UNION ALL
        SELECT 1, level, NEW.updated_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
            WHERE true
        ON CONFLICT (field, level, bucket, partition_id, status) DO UPDATE SET n = n + 1;
END;
