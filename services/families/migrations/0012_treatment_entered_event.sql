-- A family moved into ENGAGED_IN_TREATMENT announces it
-- (family.treatment_entered, outbox generation 7), and the worker ends its
-- boundary follow-up as it does for a completed referral to treatment:
-- staff recording an entry made outside Handoff (RecordTreatmentEntry, or
-- the state set by UpdateFamily) stopped nothing before, and the family
-- went on getting check-ins and boundary reminders about someone in
-- treatment. Written by the database, as family.closed is (0009), so that
-- a replica a release behind cannot record an entry unannounced. Families
-- engaged before are not announced: their follow-up may have ended long
-- ago, and the worker would withdraw the draft meetings made since.
--
-- One function announces both moves, named by the trigger's arguments
-- (the event type and its generation); family.closed's trigger moves to
-- it (replaced, not dropped: a drop would lock every read of the table),
-- and 0009's function of its own goes.
CREATE FUNCTION families_announce() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO outbox (clinic, event_type, resource, payload, generation)
    VALUES (NEW.clinic, TG_ARGV[0], 'clinics/' || NEW.clinic || '/families/' || NEW.id,
        families_name_only(NEW.clinic, NEW.id), TG_ARGV[1]::integer);
    RETURN NULL;
END $$;

CREATE TRIGGER families_treatment_entered AFTER UPDATE OF state ON families FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM 2 AND NEW.state = 2)
    EXECUTE FUNCTION families_announce('handoff.families.v1.family.treatment_entered', '7');

CREATE OR REPLACE TRIGGER families_closed AFTER UPDATE OF state ON families FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM 3 AND NEW.state = 3)
    EXECUTE FUNCTION families_announce('handoff.families.v1.family.closed', '6');
DROP FUNCTION families_announce_closed();
