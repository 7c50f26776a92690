-- handoff:no-transaction
-- A request id is its caller's own: keys are unique by clinic, caller and
-- id, no longer by clinic and id. Another user of the clinic could send,
-- first, an id the worker would send later (its ids follow from resource
-- names), and the worker's step was then refused as a reused id. Keys
-- stored before callers were (0004) count as the caller "".
DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_per_caller;
CREATE UNIQUE INDEX CONCURRENTLY idempotency_keys_per_caller ON idempotency_keys (clinic, (COALESCE(caller, '')), request_id);
ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_pkey;
