-- Matching ranks programs by a score that, apart from the place bonus,
-- depends only on a handful of program features. Programs sharing every one
-- of them form a profile; a match looks at a few rows of each profile
-- instead of scoring the whole directory (see MatchPrograms).
--
-- The text form of smallint[] and text[] never changes, so the function is
-- IMMUTABLE, as a generated column needs. Smallint arrays hold no '|', so
-- the encoding is unambiguous.
CREATE FUNCTION program_profile(services smallint[], payments smallint[], telehealth boolean,
        same_day_intake boolean, same_day_induction boolean, available_slots integer, waitlist boolean, languages text[])
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN services::text || '|' || payments::text || '|' || telehealth::int::text || same_day_intake::int::text
        || same_day_induction::int::text || (available_slots > 0)::int::text || waitlist::int::text || '|' || languages::text;

ALTER TABLE programs ADD COLUMN profile text NOT NULL GENERATED ALWAYS AS (
    program_profile(services, payments, telehealth, same_day_intake, same_day_induction, available_slots, waitlist, languages)) STORED;

-- Each profile's programs in match order, overall and within a place.
CREATE INDEX programs_profile ON programs (clinic, profile, available_slots DESC, id COLLATE "C");
CREATE INDEX programs_postal_profile ON programs (clinic, postal_code, profile, available_slots DESC, id COLLATE "C");
CREATE INDEX programs_locality_profile ON programs (clinic, locality, profile, available_slots DESC, id COLLATE "C");

-- The profiles each clinic's programs have had, so that a match reads a
-- short list instead of searching the programs for their distinct
-- profiles. Rows are only added (ON CONFLICT DO NOTHING takes no row lock,
-- so capacity reports do not queue on a shared row); a profile no program
-- has any more costs a match one index probe that finds nothing.
CREATE TABLE program_profiles (
    clinic  text NOT NULL,
    profile text NOT NULL,
    PRIMARY KEY (clinic, profile)
);
INSERT INTO program_profiles (clinic, profile) SELECT DISTINCT clinic, profile FROM programs;

CREATE FUNCTION note_program_profile() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO program_profiles (clinic, profile) VALUES (NEW.clinic, NEW.profile) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER programs_profile_added AFTER INSERT ON programs
    FOR EACH ROW EXECUTE FUNCTION note_program_profile();
CREATE TRIGGER programs_profile_changed AFTER UPDATE ON programs
    FOR EACH ROW WHEN (OLD.profile IS DISTINCT FROM NEW.profile) EXECUTE FUNCTION note_program_profile();
