DROP TRIGGER keys_count_update;
DROP TRIGGER keys_count_delete;
DROP TRIGGER keys_count_insert;
DROP TABLE key_counts;
