-- A revoked feed is kept, its token's hash moved to ended_token_hash: a
-- calendar app still reading it then gets a calendar without meetings,
-- which makes it drop the copies it holds (on an error it keeps them,
-- for as long as the phone is subscribed). token_hash is emptied, which
-- matches no token, so a replica a release behind refuses it as before.
ALTER TABLE calendar_feeds ADD COLUMN revoke_time timestamptz;
ALTER TABLE calendar_feeds ADD COLUMN ended_token_hash bytea;
