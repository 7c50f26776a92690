-- handoff:no-transaction
-- Retention: delivered outbox events and old request ids are deleted in
-- batches, oldest first (see outbox.Relay). These indexes find them
-- without reading the table. Both tables had only grown until now: the
-- indexes are built without holding off the services' writes.
DROP INDEX CONCURRENTLY IF EXISTS outbox_delivered;
CREATE INDEX CONCURRENTLY outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_age;
CREATE INDEX CONCURRENTLY idempotency_keys_age ON idempotency_keys (create_time);
