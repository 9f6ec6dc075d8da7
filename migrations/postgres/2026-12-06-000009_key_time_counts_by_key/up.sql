-- Migration 8's update and delete triggers found the count rows to change
-- with `(field, level, bucket, partition_id, status) IN (SELECT ... UNION ALL
-- SELECT ...)`, which SQLite ran as a scan of the whole of key_time_counts
-- (EXPLAIN QUERY PLAN: SCAN key_time_counts; PostgreSQL's plan
-- depends on its statistics), twice per key changed: one row
-- per second that holds a key, so every key update grew dearer as the table
-- did (681 us an outcome's key update in the API benchmark). One statement
-- per timestamp field, with the field, partition and status equal and
-- (level, bucket) IN the levels, searches the primary key instead.

CREATE OR REPLACE FUNCTION keys_time_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        -- An UPDATE, not an upsert: a partition's delete cascades to its
        -- counts and to its keys, in either order.
        UPDATE key_time_counts SET n = n - 1
            WHERE field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
                AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
        UPDATE key_time_counts SET n = n - 1
            WHERE field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
                AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
        -- A bucket left empty goes, or the table would keep a row for
        -- every second that ever had a write.
        DELETE FROM key_time_counts
            WHERE n = 0 AND field = 0 AND partition_id = OLD.partition_id AND status = OLD.status
                AND (level, bucket) IN (SELECT level, OLD.created_at >> shift FROM key_time_levels);
        DELETE FROM key_time_counts
            WHERE n = 0 AND field = 1 AND partition_id = OLD.partition_id AND status = OLD.status
                AND (level, bucket) IN (SELECT level, OLD.updated_at >> shift FROM key_time_levels);
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
