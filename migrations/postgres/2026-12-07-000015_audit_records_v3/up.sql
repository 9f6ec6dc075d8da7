-- Audit records an auditor can read (format 3): who by user id as well as
-- name, what by resource type and id, where from, and which instance wrote
-- it. Records written before keep format 2 and the hash they were chained
-- with; `target` and `client` were always the resource and the source.
ALTER TABLE audit_records RENAME COLUMN target TO resource_id;
ALTER TABLE audit_records RENAME COLUMN client TO source;
ALTER TABLE audit_records ADD COLUMN format INTEGER NOT NULL DEFAULT 2;
ALTER TABLE audit_records ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_records ADD COLUMN resource_type TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_records ADD COLUMN instance TEXT NOT NULL DEFAULT '';
-- "What happened to this key": the auditor's first question.
CREATE INDEX audit_records_resource ON audit_records (resource_id, seq);

-- Who asked for an operation, so that its outcome's record names them.
ALTER TABLE operations ADD COLUMN requested_by_id TEXT;
ALTER TABLE operations ADD COLUMN requested_by TEXT;
ALTER TABLE operations ADD COLUMN request_id TEXT;

-- Where each forwarding sink has delivered the trail to (the last record's
-- sequence number), and which instance forwards for it now, until when.
CREATE TABLE audit_sinks (
    name TEXT PRIMARY KEY NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at BIGINT
);
