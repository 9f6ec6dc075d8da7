-- luna-cckm schema, SQLite flavour. Timestamps are microseconds since the Unix
-- epoch (UTC); ids are UUID strings; booleans are 0/1.

CREATE TABLE connections (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    is_ha_enabled BOOLEAN NOT NULL,
    remap_rsa_mechanisms BOOLEAN NOT NULL,
    -- AES-256-GCM: 12-byte nonce || ciphertext || tag, under the data-dir key.
    pin_ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX connections_created ON connections (created_at, id);

CREATE TABLE connection_members (
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    partition_label TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    PRIMARY KEY (connection_id, position)
);

CREATE TABLE partitions (
    id TEXT PRIMARY KEY NOT NULL,
    connection_id TEXT NOT NULL UNIQUE REFERENCES connections (id),
    partition_label TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    ha_enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX partitions_label ON partitions (partition_label);
CREATE INDEX partitions_created ON partitions (created_at, id);

CREATE TABLE keys (
    id TEXT PRIMARY KEY NOT NULL,
    partition_id TEXT NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
    partition_label TEXT NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    operation TEXT NOT NULL,
    operation_status TEXT NOT NULL,
    operation_error TEXT,
    algorithm TEXT,
    object_type TEXT,
    mechanism TEXT,
    generated_with TEXT,
    size INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    cka_id BLOB NOT NULL,
    object_uid TEXT NOT NULL,
    sha_256_fingerprint TEXT NOT NULL,
    replication_info TEXT NOT NULL,
    replicated BOOLEAN NOT NULL,
    byok_key BOOLEAN NOT NULL,
    origin TEXT NOT NULL,
    modulus TEXT NOT NULL,
    exponent BIGINT NOT NULL,
    link_id TEXT,
    ha_enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- The default order (newest first) and the sortable timestamps.
CREATE INDEX keys_created ON keys (created_at, id);
CREATE INDEX keys_updated ON keys (updated_at, id);
-- The selective filters.
CREATE INDEX keys_partition ON keys (partition_id, created_at);
CREATE INDEX keys_label ON keys (label);
CREATE INDEX keys_status ON keys (status, created_at);
CREATE INDEX keys_fingerprint ON keys (sha_256_fingerprint);
CREATE INDEX keys_link ON keys (link_id);

CREATE TABLE operations (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Claiming takes the oldest queued or lease-expired operation.
CREATE INDEX operations_claim ON operations (state, created_at);
CREATE INDEX operations_target ON operations (target_id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    job_type TEXT NOT NULL,
    partitions TEXT NOT NULL,
    overall_status TEXT NOT NULL,
    abort_requested BOOLEAN NOT NULL,
    detailed_status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX jobs_type_created ON jobs (job_type, created_at, id);
CREATE INDEX jobs_status ON jobs (job_type, overall_status);

-- One row per (job type, partition) while a job runs: the primary key makes a
-- second job of the same type on a partition a conflict, atomically.
CREATE TABLE running_jobs (
    job_type TEXT NOT NULL,
    partition_id TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (job_type, partition_id)
);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    user_groups TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the token, hex: the token itself is never stored.
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
