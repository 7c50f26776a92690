-- Migration 0007 took every meeting then stored as published, drafts too,
-- so that calendars kept showing cancelled ones. A draft is never on a
-- calendar, and outside systems now see only published meetings
-- (Intervention.published): a draft stored before 0007 is unpublished
-- like every draft since. No meeting goes back to draft, so no draft was
-- ever scheduled.
UPDATE interventions SET published = false WHERE state = 1; -- DRAFT
