-- When a calendar app last read each feed: a feed unread for long stops
-- working (see CalendarFeed in the API).
ALTER TABLE calendar_feeds ADD COLUMN last_read_time timestamptz;
