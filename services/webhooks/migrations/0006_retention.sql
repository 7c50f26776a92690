-- Finished deliveries (delivered, dead, withdrawn) are deleted once past
-- their retention (webhooks.Keep), oldest first; this index finds them.
-- The predicate is the literal PENDING state (1), which the query repeats.
CREATE INDEX deliveries_finished_age ON deliveries (create_time) WHERE state <> 1;
CREATE INDEX sink_failures_age ON sink_failures (create_time);
