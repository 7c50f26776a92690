-- handoff:no-transaction
-- The EHR's poll of the clinic's families by when what it sees last
-- changed (FHIR Patient?_lastUpdated=ge..., a ListFamilies filter on
-- update_time, which the EHR's view reads as the shared update time).
-- Without it each poll walked the clinic's families by id, testing each
-- against the EHR's consents, until it filled a page: every family, when
-- few changed. The expression is the filter's (sharedUpdateTime), written
-- as a CASE: under row security only a condition PostgreSQL knows cannot
-- leak rows is used on an index, and COALESCE is not one. Built without
-- holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS families_shared_updated;
CREATE INDEX CONCURRENTLY families_shared_updated ON families
    (clinic, (CASE WHEN shared_update_time IS NULL THEN update_time ELSE shared_update_time END));
