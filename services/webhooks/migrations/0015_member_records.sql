-- The family member whose own record a delivery tells of (a referral made
-- for them), so that the sender asks for that member's consent, not the
-- loved one's; '' for the loved one's records.
ALTER TABLE deliveries ADD COLUMN member_id text NOT NULL DEFAULT '';
