-- handoff:no-transaction
-- A clinic's reminders still to send, earliest due first: what the
-- reminder automation polls (state = DUE), every few seconds. Without it
-- each poll walked the clinic's reminders by due time from the oldest,
-- every one ever sent (the table is never pruned), to find the few due.
-- The predicate is the one ListReminders adds to a filter on the state
-- (storedStates); built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS reminders_pending;
CREATE INDEX CONCURRENTLY reminders_pending ON reminders (clinic, due_time, id) WHERE state IN (1, 3);
