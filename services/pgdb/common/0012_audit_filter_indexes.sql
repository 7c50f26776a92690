-- handoff:no-transaction
-- "Who read or changed this record?" and "what did this person do?":
-- ListAuditEvents filtered on resource or subject, in transaction order.
-- Without these, each such question read the clinic's whole trail, which
-- only grows, before filling its first page. Built without holding off the
-- services' writes, every one of which writes a record.
DROP INDEX CONCURRENTLY IF EXISTS audit_log_resource;
CREATE INDEX CONCURRENTLY audit_log_resource ON audit_log (clinic, resource, xact, id);
DROP INDEX CONCURRENTLY IF EXISTS audit_log_subject;
CREATE INDEX CONCURRENTLY audit_log_subject ON audit_log (clinic, subject, xact, id);
