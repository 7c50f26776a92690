-- The data migrations before this one ran without a clinic scope. Where
-- the schemas' owner is an ordinary role (no superuser, no BYPASSRLS, as
-- managed databases give), row-level security, once on, let them change
-- no row, and they were recorded as applied. Each is done again here;
-- where it did its work, nothing changes.

-- 0002 and 0004: every profile a program has, with its features. A match
-- reads profiles from this table: a program whose profile is missing is
-- never offered.
INSERT INTO program_profiles (clinic, profile, services, payments, telehealth, same_day_intake, same_day_induction,
        available_slots, waitlist, languages)
SELECT DISTINCT ON (clinic, profile) clinic, profile, services, payments, telehealth, same_day_intake, same_day_induction,
    (available_slots > 0)::int, waitlist, languages
FROM programs ORDER BY clinic, profile
ON CONFLICT (clinic, profile) DO NOTHING;
UPDATE program_profiles g SET services = p.services, payments = p.payments, telehealth = p.telehealth,
    same_day_intake = p.same_day_intake, same_day_induction = p.same_day_induction,
    available_slots = (p.available_slots > 0)::int, waitlist = p.waitlist, languages = p.languages
FROM (SELECT DISTINCT ON (clinic, profile) * FROM programs ORDER BY clinic, profile) p
WHERE p.clinic = g.clinic AND p.profile = g.profile AND g.services IS NULL;
