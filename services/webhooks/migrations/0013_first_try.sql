-- When a sender first claimed the delivery since it was enqueued or last
-- replayed; NULL before. A payload no sender can read is given up on a
-- day after its first try, not after its event: a reminder's delivery
-- waits for its due time, and an outbox held up for a day must not turn
-- every delivery it then enqueues into a dead letter at its first try.
ALTER TABLE deliveries ADD COLUMN first_try_time timestamptz;
