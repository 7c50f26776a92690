-- handoff:no-transaction
-- The reminders a workflow made, still to send: what a workflow cancels as
-- it ends or is cancelled (origin_workflow = ..., the open states), a
-- boundary follow-up's or an intake's among them. Without it each page
-- of that list walked every reminder the clinic ever made, by due time.
-- Built without holding off writes.
DROP INDEX CONCURRENTLY IF EXISTS reminders_origin;
CREATE INDEX CONCURRENTLY reminders_origin ON reminders (clinic, origin_workflow, due_time, id);
