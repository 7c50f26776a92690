-- A profile's features, the ones a match scores, kept with the profile:
-- a match then scores the clinic's profiles from this short table alone,
-- where it read one program of each (an index probe and a heap page per
-- profile, which grow with the directory). The features are the profile's
-- own, so any program of it speaks for them; available_slots holds 1 when
-- the profile's programs have a free slot, 0 when not, as the profile
-- tells them apart.
ALTER TABLE program_profiles ADD COLUMN services smallint[],
    ADD COLUMN payments smallint[],
    ADD COLUMN telehealth boolean,
    ADD COLUMN same_day_intake boolean,
    ADD COLUMN same_day_induction boolean,
    ADD COLUMN available_slots integer,
    ADD COLUMN waitlist boolean,
    ADD COLUMN languages text[];

-- A profile no program has any more has nothing to match; it is made again
-- with its features if a program takes it.
DELETE FROM program_profiles g WHERE NOT EXISTS (
    SELECT 1 FROM programs p WHERE p.clinic = g.clinic AND p.profile = g.profile);
UPDATE program_profiles g SET services = p.services, payments = p.payments, telehealth = p.telehealth,
    same_day_intake = p.same_day_intake, same_day_induction = p.same_day_induction,
    available_slots = (p.available_slots > 0)::int, waitlist = p.waitlist, languages = p.languages
FROM (SELECT DISTINCT ON (clinic, profile) * FROM programs ORDER BY clinic, profile) p
WHERE p.clinic = g.clinic AND p.profile = g.profile;

CREATE OR REPLACE FUNCTION note_program_profile() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO program_profiles (clinic, profile, services, payments, telehealth, same_day_intake, same_day_induction,
            available_slots, waitlist, languages)
        VALUES (NEW.clinic, NEW.profile, NEW.services, NEW.payments, NEW.telehealth, NEW.same_day_intake,
            NEW.same_day_induction, (NEW.available_slots > 0)::int, NEW.waitlist, NEW.languages)
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
