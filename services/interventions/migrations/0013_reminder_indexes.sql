-- handoff:no-transaction
-- A family's reminders, earliest due first: what the FamilyDeleted,
-- FamilyClosed and ContactWithdrawn workflows list to cancel. Without it
-- each page walked the clinic's reminders by due time, every one ever
-- made (the table is never pruned), to find the family's few.
DROP INDEX CONCURRENTLY IF EXISTS reminders_family;
CREATE INDEX CONCURRENTLY reminders_family ON reminders (clinic, recipient_family, due_time, id);
-- Reminders due and not delivered, across clinics: the gauge an operator
-- watches, read at every scrape. The states are the gauge's literals
-- (SCHEDULED and CLAIMED, as stored).
DROP INDEX CONCURRENTLY IF EXISTS reminders_undelivered;
CREATE INDEX CONCURRENTLY reminders_undelivered ON reminders (due_time) WHERE state IN (1, 3);
