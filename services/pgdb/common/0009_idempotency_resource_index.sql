-- handoff:no-transaction
-- Finds the stored responses about a record and the records under it
-- (0008), built without holding off the services' writes.
DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_resource;
CREATE INDEX CONCURRENTLY idempotency_keys_resource ON idempotency_keys (clinic, resource text_pattern_ops)
    WHERE resource IS NOT NULL;
