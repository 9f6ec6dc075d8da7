DROP INDEX operations_lease;
DROP INDEX operations_claim;
CREATE INDEX operations_claim ON operations (state, created_at);
