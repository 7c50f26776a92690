-- A calendar feed shows a referral's intake appointment with a version and
-- a time of their own, which move only with what the event shows (see
-- appointmentVersion). Before, they were the referral's own version and
-- update time: the feeds already sent hold those, and a calendar ignores
-- an event whose SEQUENCE goes back. So each referral written before
-- counts on from them: calendar_base is its version then, and
-- calendar_base_time its update time; only the steps after it add. NULL
-- for a referral made since, which counts from 1 and its creation.
ALTER TABLE referrals ADD COLUMN calendar_base bigint, ADD COLUMN calendar_base_time timestamptz;
UPDATE referrals SET calendar_base = version, calendar_base_time = update_time;
