-- handoff:no-transaction
-- A request id is its caller's own: the key becomes clinic, caller and id,
-- no longer clinic and id. Another user of the clinic could send first an
-- id someone else would send later (the worker's ids follow from resource
-- names), and that caller's call was then refused as a reused id.
-- Keys stored before callers were (0004) belong to the caller "".
-- Every statement may run again after an interruption: the new index is
-- dropped and built again while the old key still holds, and the key is
-- swapped in one statement.
UPDATE idempotency_keys SET caller = '' WHERE caller IS NULL;
ALTER TABLE idempotency_keys ALTER COLUMN caller SET DEFAULT '';
ALTER TABLE idempotency_keys ALTER COLUMN caller SET NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_per_caller;
CREATE UNIQUE INDEX CONCURRENTLY idempotency_keys_per_caller ON idempotency_keys (clinic, caller, request_id);
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY USING INDEX idempotency_keys_per_caller;
