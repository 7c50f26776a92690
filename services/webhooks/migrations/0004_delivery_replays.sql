-- How many times an administrator replayed a dead letter. A replay sends
-- the notification again, a disclosure of its own: the sender records a
-- full payload's disclosure once per delivery and replay, not per attempt.
ALTER TABLE deliveries ADD COLUMN replays integer NOT NULL DEFAULT 0;
