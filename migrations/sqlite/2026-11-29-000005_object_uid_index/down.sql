DROP INDEX keys_partition_object;
