-- handoff:no-transaction
-- The yes path looks up an intervention's live holds and its referrals
-- (filter intervention = ..., paged by id), and deleting a program asks
-- whether any hold or referral names it. Without these, each read the
-- clinic's whole history of holds and referrals, which is never pruned.
-- Built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS holds_intervention;
CREATE INDEX CONCURRENTLY holds_intervention ON holds (clinic, intervention, id);
DROP INDEX CONCURRENTLY IF EXISTS referrals_intervention;
CREATE INDEX CONCURRENTLY referrals_intervention ON referrals (clinic, intervention, id);
DROP INDEX CONCURRENTLY IF EXISTS holds_any_program;
CREATE INDEX CONCURRENTLY holds_any_program ON holds (clinic, program_id);
DROP INDEX CONCURRENTLY IF EXISTS referrals_program;
CREATE INDEX CONCURRENTLY referrals_program ON referrals (clinic, program_id);
