-- ListAuditEvents paged by id could pass a record by: ids are drawn when a
-- row is written, not when its transaction commits, so a record written
-- early and committed late could land behind a page already read. Each
-- record now notes its transaction (xact), and the list shows only records
-- of transactions older than every one still running, in transaction
-- order: nothing can commit behind a page once it is read. Rows written
-- before this read as transaction 0, first, in id order. The constant
-- default first spares the table a rewrite.
ALTER TABLE audit_log ADD COLUMN xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE audit_log ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
