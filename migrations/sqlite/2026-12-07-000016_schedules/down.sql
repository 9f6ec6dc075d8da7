ALTER TABLE jobs DROP COLUMN schedule_name;
ALTER TABLE jobs DROP COLUMN schedule_id;
DROP TABLE schedules;
