-- Keys counted per time bucket of created_at and of updated_at, at three
-- levels (2^20, 2^28 and 2^36 microseconds: about 1 s, 4.5 min and 19 h),
-- per (partition, status), kept by triggers in the same transaction as every
-- change of a key row. A deep page (`skip` in the thousands) of a list sorted
-- by a timestamp finds the bucket its first row is in by summing a few
-- hundred counts, level by level, then seeks into the index from there:
-- it walks only the rows of the 1-second bucket before the page.
-- Instances still on the previous version may be writing keys: none may
-- commit between the backfill below and the triggers (it would never be
-- counted). Held until this migration's transaction ends.
LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE key_time_levels (
    level SMALLINT PRIMARY KEY NOT NULL,
    shift SMALLINT NOT NULL
);
INSERT INTO key_time_levels (level, shift) VALUES (0, 20), (1, 28), (2, 36);

-- field: 0 for created_at, 1 for updated_at. The key leads with what a seek
-- ranges over; partition and status follow, so every filter uses it.
CREATE TABLE key_time_counts (
    field SMALLINT NOT NULL,
    level SMALLINT NOT NULL,
    bucket BIGINT NOT NULL,
    partition_id TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (field, level, bucket, partition_id, status)
);

INSERT INTO key_time_counts (field, level, bucket, partition_id, status, n)
    SELECT 0, l.level, k.created_at >> l.shift, k.partition_id, k.status, COUNT(*)
        FROM keys k, key_time_levels l GROUP BY 1, 2, 3, 4, 5
    UNION ALL
    SELECT 1, l.level, k.updated_at >> l.shift, k.partition_id, k.status, COUNT(*)
        FROM keys k, key_time_levels l GROUP BY 1, 2, 3, 4, 5;

CREATE FUNCTION keys_time_count() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER keys_time_count_insert AFTER INSERT ON keys FOR EACH ROW EXECUTE FUNCTION keys_time_count();
CREATE TRIGGER keys_time_count_delete AFTER DELETE ON keys FOR EACH ROW EXECUTE FUNCTION keys_time_count();
CREATE TRIGGER keys_time_count_update AFTER UPDATE OF partition_id, status, created_at, updated_at ON keys FOR EACH ROW
    WHEN (OLD.partition_id IS DISTINCT FROM NEW.partition_id OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION keys_time_count();
