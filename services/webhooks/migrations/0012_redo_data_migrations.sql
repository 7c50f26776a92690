-- The data migrations before this one ran without a clinic scope. Where
-- the schemas' owner is an ordinary role (no superuser, no BYPASSRLS, as
-- managed databases give), row-level security, once on, let them change
-- no row, and they were recorded as applied. Each is done again here,
-- limited to the rows it was for; where it did its work, nothing changes.

-- 0002: a delivered or withdrawn delivery keeps no payload.
UPDATE deliveries SET payload = NULL WHERE state IN (2, 4) AND payload IS NOT NULL;

-- 0003: a FULL subscription made before audiences were kept becomes
-- ID_ONLY (every FULL subscription made since has its audience).
UPDATE subscriptions SET payload = 1 WHERE payload = 2 AND audience = '';

-- 0007: a subscription to referral or appointment topics made before
-- owners' roles were kept is taken for the EHR's, whose notifications
-- wait on consent.
UPDATE subscriptions SET outsider = true
WHERE topics && ARRAY[1, 2]::smallint[] AND NOT outsider
    AND create_time < (SELECT applied_at FROM schema_migrations WHERE id = 'webhooks/0007_outsider.sql');
