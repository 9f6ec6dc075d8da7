-- Luna Network HSM servers, as CipherTrust Manager's clients register them
-- before their connections (POST …/luna-network/servers); a connection may
-- name the server its partitions are on.
CREATE TABLE hsm_servers (
    id TEXT PRIMARY KEY NOT NULL,
    hostname TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    certificate_pem TEXT NOT NULL,
    certificate_subject TEXT NOT NULL,
    certificate_issuer TEXT NOT NULL,
    certificate_not_before BIGINT NOT NULL,
    certificate_not_after BIGINT NOT NULL,
    certificate_sha256 TEXT NOT NULL,
    -- Comma-separated product names.
    products TEXT NOT NULL,
    -- The client's JSON, as given.
    meta TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX hsm_servers_created ON hsm_servers (created_at, id);

ALTER TABLE connections ADD COLUMN server_id TEXT REFERENCES hsm_servers (id);
CREATE INDEX connections_server ON connections (server_id);
