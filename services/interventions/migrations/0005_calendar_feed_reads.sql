-- When a calendar app last read each feed: a feed unread for long stops
-- working (see CalendarFeed in the API). Feeds made before this was kept
-- count as read now: otherwise every feed older than the idle limit, read
-- hourly for months, would lapse at the upgrade, before a read could be
-- recorded.
ALTER TABLE calendar_feeds ADD COLUMN last_read_time timestamptz;
UPDATE calendar_feeds SET last_read_time = now();
