-- handoff:no-transaction
-- Finished deliveries (delivered, dead, withdrawn) are deleted once past
-- their retention (webhooks.Keep), oldest first; this index finds them.
-- The predicate is the literal PENDING state (1), which the query repeats.
-- Built without holding off the sink's and the sender's writes.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_finished_age;
CREATE INDEX CONCURRENTLY deliveries_finished_age ON deliveries (create_time) WHERE state <> 1;
DROP INDEX CONCURRENTLY IF EXISTS sink_failures_age;
CREATE INDEX CONCURRENTLY sink_failures_age ON sink_failures (create_time);
