-- A program deleted while holds or referrals name it is kept, marked with
-- the time, so that they still resolve (AIP-164 soft delete); lists and
-- matches leave it out.
ALTER TABLE programs ADD COLUMN delete_time timestamptz;
