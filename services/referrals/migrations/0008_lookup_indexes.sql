-- handoff:no-transaction
-- The calendar feeds' window of intake appointments (intake_time >= ...),
-- and a family's holds (releasing a deleted family's, filter family = ...,
-- paged by id): without these, each read the clinic's whole history of
-- referrals or holds, which is never pruned. Built without holding off
-- writes, as the intake times booked before 0007 are filled in first: in
-- a statement of its own, which locks only the rows it changes.
UPDATE referrals SET intake_time = (appointment->>'startTime')::timestamptz
WHERE appointment IS NOT NULL AND intake_time IS DISTINCT FROM (appointment->>'startTime')::timestamptz;
DROP INDEX CONCURRENTLY IF EXISTS referrals_intake;
CREATE INDEX CONCURRENTLY referrals_intake ON referrals (clinic, intake_time) WHERE intake_time IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS holds_family;
CREATE INDEX CONCURRENTLY holds_family ON holds (clinic, family, id);
