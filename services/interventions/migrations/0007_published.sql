-- Whether the meeting was ever scheduled, and so ever on a calendar feed:
-- a draft cancelled before that has nothing to take off any calendar.
-- Meetings from before this column count as published, as the feed showed
-- every cancelled one then; new rows start unpublished.
ALTER TABLE interventions ADD COLUMN published boolean NOT NULL DEFAULT true;
ALTER TABLE interventions ALTER COLUMN published SET DEFAULT false;

-- Set by the database whenever a meeting is scheduled, not by the
-- service's UPDATE: a replica a release behind, during a rolling update,
-- schedules meetings without knowing the column, and one of those
-- cancelled later would drop off calendars instead of showing cancelled.
CREATE FUNCTION interventions_mark_published() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 2 THEN -- SCHEDULED
        NEW.published := true;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER interventions_published BEFORE INSERT OR UPDATE ON interventions
    FOR EACH ROW EXECUTE FUNCTION interventions_mark_published();
