-- The intake appointment's start in a column of its own, for the calendar
-- feeds and FHIR's Appointment searches (filter intake_time), which read
-- the start out of the appointment's JSON for every referral the clinic
-- ever made. A cast of text to timestamptz cannot be indexed (it depends
-- on the session's zone), so the column is kept by a trigger: it follows
-- whatever writes the appointment, a replica of the release before this
-- one included, during a rolling deploy. What was booked before is filled
-- in by 0008, outside this transaction: here the ALTER's lock would hold
-- every read of the table for the whole of it.
ALTER TABLE referrals ADD COLUMN IF NOT EXISTS intake_time timestamptz;

CREATE OR REPLACE FUNCTION note_intake_time() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- protojson writes the start in UTC with its offset ("Z"): the cast
    -- does not depend on the session's zone.
    NEW.intake_time := (NEW.appointment->>'startTime')::timestamptz;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS referrals_intake_time ON referrals;
CREATE TRIGGER referrals_intake_time BEFORE INSERT OR UPDATE OF appointment ON referrals
    FOR EACH ROW EXECUTE FUNCTION note_intake_time();
