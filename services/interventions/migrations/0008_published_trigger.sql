-- published is set by the database whenever a meeting is scheduled, not by
-- the service's UPDATE: a replica a release behind, during a rolling
-- update, schedules meetings without knowing the column, and one of those
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
