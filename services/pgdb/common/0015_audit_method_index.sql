-- handoff:no-transaction
-- "Who called this method?": the audit trail filtered on method, in
-- transaction order. Without it, each such question read the clinic's
-- whole trail, kept for years, until the first page filled.
DROP INDEX CONCURRENTLY IF EXISTS audit_log_method;
CREATE INDEX CONCURRENTLY audit_log_method ON audit_log (clinic, method, xact, id);
