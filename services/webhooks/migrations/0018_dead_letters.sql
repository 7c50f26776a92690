-- handoff:no-transaction
-- The dead letters not replayed: what the sender's gauge counts at every
-- scrape. Without it the gauge read every delivery of the last 30 days,
-- delivered ones and all, each time. Built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_dead;
CREATE INDEX CONCURRENTLY deliveries_dead ON deliveries (seq) WHERE state = 3;
