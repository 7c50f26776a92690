-- The hashes of a feed's tokens replaced by a retried create (its first
-- answer may have reached a calendar app), newest first, the last eight:
-- such a token reads a calendar without meetings, as a revoked feed's
-- does, whatever happens to the feed after (a second retry, a revocation,
-- which moves only the current token to ended_token_hash).
ALTER TABLE calendar_feeds ADD COLUMN replaced_token_hashes bytea[] NOT NULL DEFAULT '{}';
