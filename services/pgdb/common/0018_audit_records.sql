-- The records a list or search returned: a page of families shows every
-- one of them, and "who saw this family's record?" must find the list that
-- showed it, not only the calls that named it. records keeps them on the
-- event, in the order shown (NULL for every other call); audit_records
-- holds one row for each, which ListAuditEvents' `record` filter reads by
-- its index. Both are only ever added to, as audit_log is.
ALTER TABLE audit_log ADD COLUMN records text[];
CREATE TABLE audit_records (
    clinic    text   NOT NULL,
    record    text   NOT NULL,
    audit_id  bigint NOT NULL
);
CREATE INDEX audit_records_record ON audit_records (clinic, record, audit_id);
