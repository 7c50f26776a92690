-- A dead letter of a resource that is since handled (a reminder delivered
-- or cancelled) is withdrawn too: replayed, it would send a stale reminder
-- and disclose it again. The index covers both states the withdrawal
-- looks for (PENDING 1, DEAD 3), as literals the query repeats.
CREATE INDEX deliveries_open_resource ON deliveries (clinic, resource, topic) WHERE state IN (1, 3);
DROP INDEX deliveries_pending_resource;
