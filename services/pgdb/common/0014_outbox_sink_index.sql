-- handoff:no-transaction
-- The sink consumer's pending events (0013), as outbox_pending is the
-- dispatch's. Built without holding off the services' writes.
DROP INDEX CONCURRENTLY IF EXISTS outbox_sink_pending;
CREATE INDEX CONCURRENTLY outbox_sink_pending ON outbox (id) WHERE sink_delivered_at IS NULL;
