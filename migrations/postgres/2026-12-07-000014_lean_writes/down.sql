-- Back to migration 13's schema: the two indexes, and the count triggers
-- of migrations 3 and 9 (the counts the code kept are exact, so the
-- triggers carry on from them).
LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE;

CREATE INDEX audit_records_at ON audit_records (at);
CREATE INDEX operations_target ON operations (target_id);

CREATE TABLE key_time_levels (
    level SMALLINT PRIMARY KEY NOT NULL,
    shift SMALLINT NOT NULL
);
INSERT INTO key_time_levels (level, shift) VALUES (0, 20), (1, 28), (2, 36);

CREATE FUNCTION keys_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE key_counts SET n = n - 1 WHERE partition_id = OLD.partition_id AND status = OLD.status;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO key_counts (partition_id, status, n) VALUES (NEW.partition_id, NEW.status, 1)
            ON CONFLICT (partition_id, status) DO UPDATE SET n = key_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER keys_count_insert AFTER INSERT ON keys FOR EACH ROW EXECUTE FUNCTION keys_count();
CREATE TRIGGER keys_count_delete AFTER DELETE ON keys FOR EACH ROW EXECUTE FUNCTION keys_count();
CREATE TRIGGER keys_count_update AFTER UPDATE OF partition_id, status ON keys FOR EACH ROW
    WHEN (OLD.partition_id IS DISTINCT FROM NEW.partition_id OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION keys_count();

CREATE FUNCTION keys_time_count() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER keys_time_count_insert AFTER INSERT ON keys FOR EACH ROW EXECUTE FUNCTION keys_time_count();
CREATE TRIGGER keys_time_count_delete AFTER DELETE ON keys FOR EACH ROW EXECUTE FUNCTION keys_time_count();
CREATE TRIGGER keys_time_count_update AFTER UPDATE OF partition_id, status, created_at, updated_at ON keys FOR EACH ROW
    WHEN (OLD.partition_id IS DISTINCT FROM NEW.partition_id OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION keys_time_count();
