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
