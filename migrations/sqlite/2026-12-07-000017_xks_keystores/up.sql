-- AWS KMS external key stores served here (the XKS proxy API): the path
-- AWS KMS calls, the region it signs for, the partition whose AES-256 keys
-- are its external keys. No foreign key to the partition: a keystore whose
-- partition was forgotten answers KeyNotFoundException.
CREATE TABLE xks_keystores (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    uri_path_prefix TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    partition_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX xks_keystores_created ON xks_keystores (created_at, id);

-- Their SigV4 credentials; the secret sealed as connection PINs are.
CREATE TABLE xks_credentials (
    access_key_id TEXT PRIMARY KEY NOT NULL,
    keystore_id TEXT NOT NULL REFERENCES xks_keystores (id) ON DELETE CASCADE,
    secret_ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    -- When it stops being taken; NULL while it is the newest.
    expires_at BIGINT
);
CREATE INDEX xks_credentials_keystore ON xks_credentials (keystore_id);
