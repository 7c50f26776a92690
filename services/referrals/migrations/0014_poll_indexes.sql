-- handoff:no-transaction
-- The EHR's polls: FHIR Task?status= (a filter on state) and
-- _lastUpdated=ge... (on update_time), of the whole clinic. Without these
-- each poll walked the clinic's referrals by id, never pruned, until it
-- filled a page: every referral it ever made, when few are open or
-- changed. Built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS referrals_state;
CREATE INDEX CONCURRENTLY referrals_state ON referrals (clinic, state, id);
DROP INDEX CONCURRENTLY IF EXISTS referrals_updated;
CREATE INDEX CONCURRENTLY referrals_updated ON referrals (clinic, update_time);
