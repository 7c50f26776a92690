-- What each stored response names (its name field), so that deleting a
-- record can forget the responses about it: a stored response is a copy
-- of the record as it was (a family's members, their contacts), and a
-- retry after the deletion must not get it back. A forgotten key keeps its
-- request id, so the call is still not run twice; a retry is told the
-- record is gone. Keys stored before this name nothing and age out as
-- ever.
ALTER TABLE idempotency_keys ADD COLUMN resource text;
ALTER TABLE idempotency_keys ADD COLUMN forgotten boolean NOT NULL DEFAULT false;
