-- A consent names its patient: the loved one (member_id '') or a family
-- member, for the member's own records (a referral made for them). Every
-- consent recorded before was the loved one's. A disclosure records whose
-- record left, so that the accounting says which patient's consent
-- covered it.
ALTER TABLE consents ADD COLUMN member_id text NOT NULL DEFAULT '';
ALTER TABLE disclosures ADD COLUMN member_id text NOT NULL DEFAULT '';
