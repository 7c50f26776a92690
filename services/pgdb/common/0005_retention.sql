-- Retention: delivered outbox events and old request ids are deleted in
-- batches, oldest first (see outbox.Relay). These indexes find them
-- without reading the table.
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX idempotency_keys_age ON idempotency_keys (create_time);
