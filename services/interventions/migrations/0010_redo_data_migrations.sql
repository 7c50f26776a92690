-- The data migrations before this one ran without a clinic scope. Where
-- the schemas' owner is an ordinary role (no superuser, no BYPASSRLS, as
-- managed databases give), row-level security, once on, let them change
-- no row, and they were recorded as applied. Each is done again here,
-- limited to the rows it was for; where it did its work, nothing changes.

-- 0005: a feed made before reads were kept counts as read at the upgrade
-- (unread since, it lapses as it would have). One that has lapsed since
-- (made more than the idle limit, 90 days, ago, never read as far as the
-- service knows) stays lapsed: its counselor may have made another.
UPDATE calendar_feeds SET last_read_time = m.applied_at
FROM schema_migrations m
WHERE m.id = 'interventions/0005_calendar_feed_reads.sql'
    AND calendar_feeds.last_read_time IS NULL AND calendar_feeds.create_time < m.applied_at
    AND calendar_feeds.create_time > now() - interval '90 days';
