-- Migration 8's function again.
CREATE OR REPLACE FUNCTION keys_time_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        -- An UPDATE, not an upsert: a partition's delete cascades to its
        -- counts and to its keys, in either order.
        UPDATE key_time_counts SET n = n - 1
            WHERE (field, level, bucket, partition_id, status) IN (
                SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
                UNION ALL
                SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
        -- A bucket left empty goes, or the table would keep a row for
        -- every second that ever had a write.
        DELETE FROM key_time_counts WHERE n = 0 AND (field, level, bucket, partition_id, status) IN (
            SELECT 0, level, OLD.created_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels
            UNION ALL
            SELECT 1, level, OLD.updated_at >> shift, OLD.partition_id, OLD.status FROM key_time_levels);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
            SELECT 0, level, NEW.created_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
            UNION ALL
            SELECT 1, level, NEW.updated_at >> shift, NEW.partition_id, NEW.status, 1 FROM key_time_levels
            ON CONFLICT (field, level, bucket, partition_id, status) DO UPDATE SET n = key_time_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;
