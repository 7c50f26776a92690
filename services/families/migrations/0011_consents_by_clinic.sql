-- handoff:no-transaction
-- The consents of every family of a clinic (ListConsents of families/-,
-- which an EHR polls), in id order for their pages: without it, each page
-- sorted every consent of the clinic. Built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS consents_clinic_id;
CREATE INDEX CONCURRENTLY consents_clinic_id ON consents (clinic, id);
