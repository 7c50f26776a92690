-- Until when a receiver asked, by a 429 or 503 with Retry-After, to be
-- sent nothing: every delivery of the subscription waits, not only the
-- one that was answered so, which would otherwise each be sent, refused
-- the same way, and use up an attempt.
ALTER TABLE subscriptions ADD COLUMN paused_until timestamptz;
