-- The workflow that created a reminder, told when its delivery fails.
ALTER TABLE reminders ADD COLUMN origin_workflow text NOT NULL DEFAULT '';
