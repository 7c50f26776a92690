-- The family member whose own record a delivery tells of (a referral made
-- for them), so that the sender asks for that member's consent, not the
-- loved one's; '' for the loved one's records. NULL for deliveries enqueued
-- before: unknown, so the sender reads it from the payload it keeps, and
-- withholds from an outside system a referral's notification that keeps
-- none (identifiers only), which it cannot tell to be the loved one's.
ALTER TABLE deliveries ADD COLUMN member_id text;
