DROP TRIGGER keys_time_count_update;
DROP TRIGGER keys_time_count_delete;
DROP TRIGGER keys_time_count_insert;
DROP TABLE key_time_counts;
DROP TABLE key_time_levels;
