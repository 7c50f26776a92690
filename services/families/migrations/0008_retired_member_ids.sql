-- The ids of the members a family no longer has. Consents, disclosures,
-- referrals, meetings and CRAFT sessions name a member by id, and a
-- member's own consent covers the referrals made under that id: an id
-- given to another person later would hand that person the first one's
-- consents and records. So an id, once removed, is never taken again.
-- Members removed before this are found where their ids were kept in this
-- schema: the members' own consents and the CRAFT sessions.
ALTER TABLE families ADD COLUMN retired_member_ids text[] NOT NULL DEFAULT '{}';
UPDATE families f SET retired_member_ids = ARRAY(
    SELECT used.id FROM (
        SELECT c.member_id AS id FROM consents c WHERE c.clinic = f.clinic AND c.family_id = f.id AND c.member_id <> ''
        UNION
        SELECT u.id FROM craft_sessions s, unnest(s.member_ids) AS u(id) WHERE s.clinic = f.clinic AND s.family_id = f.id
    ) used
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(f.doc -> 'members', '[]'::jsonb)) m WHERE m ->> 'id' = used.id)
    ORDER BY used.id);

-- Kept by the database on every update that changes the members, not by
-- the service's UPDATE: a replica a release behind, during a rolling
-- update, removes members without knowing the column.
CREATE FUNCTION families_retire_member_ids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.retired_member_ids := ARRAY(
        SELECT DISTINCT ids.id FROM (
            SELECT unnest(NEW.retired_member_ids) AS id
            UNION
            SELECT m ->> 'id' FROM jsonb_array_elements(COALESCE(OLD.doc -> 'members', '[]'::jsonb)) m
            WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(NEW.doc -> 'members', '[]'::jsonb)) n
                WHERE n ->> 'id' = m ->> 'id')
        ) ids
        WHERE ids.id IS NOT NULL
        ORDER BY ids.id);
    RETURN NEW;
END
$$;

CREATE TRIGGER families_retired_member_ids BEFORE UPDATE ON families
    FOR EACH ROW WHEN (OLD.doc -> 'members' IS DISTINCT FROM NEW.doc -> 'members')
    EXECUTE FUNCTION families_retire_member_ids();
