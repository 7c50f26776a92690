-- When the intake appointment an INTAKE_UPCOMING reminder announces
-- begins, as the workflow that made it gave it; NULL for every other
-- reminder, those made before included. Adding a nullable column
-- rewrites nothing.
ALTER TABLE reminders ADD COLUMN event_start_time timestamptz;
