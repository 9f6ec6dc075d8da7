ALTER TABLE connections DROP COLUMN meta;
ALTER TABLE connections DROP COLUMN products;
ALTER TABLE connections DROP COLUMN last_connection_error;
ALTER TABLE connections DROP COLUMN last_connection_at;
ALTER TABLE connections DROP COLUMN last_connection_ok;
