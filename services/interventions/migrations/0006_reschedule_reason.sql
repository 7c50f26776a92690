-- Why a meeting last moved. A column, not a field of doc: a service one
-- release behind, during a rolling update or after a rollback, reads doc
-- and must not meet a field it does not know.
ALTER TABLE interventions ADD COLUMN reschedule_reason text NOT NULL DEFAULT '';
