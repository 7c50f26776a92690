-- handoff:no-transaction
-- "What happened last week?" and "which calls were refused?": the audit
-- trail filtered on time or outcome. Without these, each such question
-- read the clinic's trail, kept for years, from its oldest record until a
-- page filled. A time bound becomes a bound on the transaction order
-- (audit.List), found on the first index without reading the table; the
-- outcome is indexed as the filter reads it.
DROP INDEX CONCURRENTLY IF EXISTS audit_log_time;
CREATE INDEX CONCURRENTLY audit_log_time ON audit_log (clinic, event_time) INCLUDE (xact);
DROP INDEX CONCURRENTLY IF EXISTS audit_log_outcome;
CREATE INDEX CONCURRENTLY audit_log_outcome ON audit_log
    (clinic, (CASE outcome WHEN 'CANCELED' THEN 'CANCELLED' ELSE outcome END), xact, id);
