-- When a delivery finished (delivered, dead or withdrawn); NULL while it
-- is pending. Retention counts from it: a delivery may wait long after its
-- event (a reminder due in a month) and may die only then, and a dead
-- letter must stay replayable for the whole retention after it died.
ALTER TABLE deliveries ADD COLUMN finish_time timestamptz;
