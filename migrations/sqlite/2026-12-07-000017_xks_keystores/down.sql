DROP TABLE xks_credentials;
DROP TABLE xks_keystores;
