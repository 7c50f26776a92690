-- handoff:no-transaction
-- Finished deliveries are deleted once past their retention, counted from
-- when they finished; rows finished before finish_time existed count from
-- their last attempt. The expression and the PENDING literal (1) are the
-- prune query's. Built without holding off the sink's and the sender's
-- writes; the index on the event's time goes.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_finished;
CREATE INDEX CONCURRENTLY deliveries_finished ON deliveries ((COALESCE(finish_time, GREATEST(create_time, next_attempt_time)))) WHERE state <> 1;
DROP INDEX CONCURRENTLY IF EXISTS deliveries_finished_age;
