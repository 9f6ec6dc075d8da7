-- Key counts per (partition, status), kept by triggers in the same transaction
-- as every change of a key row: list totals for the common filters (none,
-- partition, status, both) read a few rows instead of counting every key.
CREATE TABLE key_counts (
    partition_id TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (partition_id, status)
);

INSERT INTO key_counts (partition_id, status, n)
    SELECT partition_id, status, COUNT(*) FROM keys GROUP BY partition_id, status;

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
