-- When the dispatch tries a failed event again. A relay kept its wait
-- after a failure in memory, and gave the delivery lock back after each
-- idle poll: another replica, knowing nothing of the failure, took the
-- lock and tried the event again at once, so with several replicas a
-- failing family was tried about every poll instead of backing off. Kept
-- with the event, the wait holds for every replica. A column without a
-- default: added without rewriting the table.
ALTER TABLE outbox ADD COLUMN retry_at timestamptz;
