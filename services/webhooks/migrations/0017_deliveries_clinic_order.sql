-- handoff:no-transaction
-- A clinic's deliveries across its subscriptions, in order
-- (subscriptions/-): without it the list walked every clinic's
-- deliveries by seq, or read all of the clinic's and sorted them.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_clinic_order;
CREATE INDEX CONCURRENTLY deliveries_clinic_order ON deliveries (clinic, seq);
