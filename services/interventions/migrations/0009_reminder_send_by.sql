-- The latest time a reminder may go out (the recipient's quiet hours
-- begin then); a claim from then on fails it, for its workflow to send it
-- again after them. NULL for reminders without one, those made before
-- included. Adding a nullable column rewrites nothing.
ALTER TABLE reminders ADD COLUMN send_by_time timestamptz;
