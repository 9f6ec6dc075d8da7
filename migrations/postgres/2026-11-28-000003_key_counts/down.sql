DROP TRIGGER keys_count_update ON keys;
DROP TRIGGER keys_count_delete ON keys;
DROP TRIGGER keys_count_insert ON keys;
DROP FUNCTION keys_count();
DROP TABLE key_counts;
