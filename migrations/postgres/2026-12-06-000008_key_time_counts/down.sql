DROP TRIGGER keys_time_count_update ON keys;
DROP TRIGGER keys_time_count_delete ON keys;
DROP TRIGGER keys_time_count_insert ON keys;
DROP FUNCTION keys_time_count();
DROP TABLE key_time_counts;
DROP TABLE key_time_levels;
