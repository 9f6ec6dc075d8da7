-- The audit trail: append-only; each record carries the SHA-256 of the one
-- before (hex), so an edited or deleted record breaks the chain.
CREATE TABLE audit_records (
    seq BIGINT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_records_at ON audit_records (at);
CREATE INDEX audit_records_user ON audit_records (username, seq);
