-- The outcome of the last test of a connection (POST …/connections/{id}/test):
-- whether every member logged in, when, and what failed.
ALTER TABLE connections ADD COLUMN last_connection_ok BOOLEAN;
ALTER TABLE connections ADD COLUMN last_connection_at BIGINT;
ALTER TABLE connections ADD COLUMN last_connection_error TEXT;
-- What CipherTrust's clients send with a connection and read back: the
-- products it serves (a comma list) and their own data (JSON, as given).
ALTER TABLE connections ADD COLUMN products TEXT NOT NULL DEFAULT '';
ALTER TABLE connections ADD COLUMN meta TEXT;
