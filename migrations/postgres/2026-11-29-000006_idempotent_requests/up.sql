-- Creates made under an Idempotency-Key, written in the same transaction as
-- what they made: a client that lost the answer asks again and gets it.
CREATE TABLE idempotent_requests (
    caller TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    route TEXT NOT NULL,
    body_digest TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
