-- handoff:no-transaction
-- A revocation for one treating provider names it as the clinic's
-- accounting knows it (RevokeConsent asks whether any of the clinic's
-- disclosures went to it). The accounting grows with every read by an
-- outside system; this index answers in one step, inside the revocation's
-- lock on the consent. Built without holding off the services' writes.
DROP INDEX CONCURRENTLY IF EXISTS disclosures_recipient;
CREATE INDEX CONCURRENTLY disclosures_recipient ON disclosures (clinic, recipient);
