-- Whether the meeting was ever scheduled, and so ever on a calendar feed:
-- a draft cancelled before that has nothing to take off any calendar.
-- Meetings from before this column count as published, as the feed showed
-- every cancelled one then; new rows start unpublished.
ALTER TABLE interventions ADD COLUMN published boolean NOT NULL DEFAULT true;
ALTER TABLE interventions ALTER COLUMN published SET DEFAULT false;
