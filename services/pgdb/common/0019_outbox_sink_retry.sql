-- The webhook sink's own wait after a failure, kept with the event as the
-- dispatch's is (0017): in memory only, a replica that took the lock next
-- tried a failed event again at once, so with several replicas the sink
-- hit a failing webhooks database about once a poll each. Its own columns:
-- the consumers fail apart, and one's wait must not hold back the other.
-- Columns without a default: added without rewriting the table.
ALTER TABLE outbox ADD COLUMN sink_attempts integer, ADD COLUMN sink_retry_at timestamptz;
