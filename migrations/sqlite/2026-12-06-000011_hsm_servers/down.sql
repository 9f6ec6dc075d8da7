DROP INDEX connections_server;
ALTER TABLE connections DROP COLUMN server_id;
DROP TABLE hsm_servers;
