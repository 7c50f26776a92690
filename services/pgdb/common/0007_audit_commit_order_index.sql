-- handoff:no-transaction
-- The index ListAuditEvents pages by (see 0006), built without holding off
-- the services' writes, every one of which writes a record. The id index
-- served only that list.
DROP INDEX CONCURRENTLY IF EXISTS audit_log_clinic_xact;
CREATE INDEX CONCURRENTLY audit_log_clinic_xact ON audit_log (clinic, xact, id);
DROP INDEX CONCURRENTLY IF EXISTS audit_log_clinic_time;
