-- An outside system (the EHR, under an appointments consent) sees an
-- intervention as an appointment: when, with whom, in what state. That view
-- has a version and an update time of its own: the intervention's own move
-- with its checklist, its plan and its check-ins, and a check-in follows
-- only a meeting that ended without a yes, so a new etag or update_time
-- after the meeting would tell the EHR that the loved one refused.
-- It is a counter of its own, moved by one for each change outsiders can
-- see. NULL means the same as version and update_time, as for every row
-- not written since this column came.
ALTER TABLE interventions ADD COLUMN shared_version bigint,
    ADD COLUMN shared_update_time timestamptz,
    -- The version at which the writer last weighed what outsiders see.
    ADD COLUMN shared_checked bigint;

-- A write that did not weigh it (a replica a release behind, during a
-- rolling update, knows nothing of these columns) counts as changing what
-- outsiders see, so that a change they can see is never hidden behind an
-- old etag.
CREATE FUNCTION interventions_shared_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version <> OLD.version AND NEW.shared_checked IS DISTINCT FROM NEW.version THEN
        NEW.shared_version := COALESCE(OLD.shared_version, OLD.version) + 1;
        NEW.shared_update_time := NEW.update_time;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER interventions_shared BEFORE UPDATE ON interventions
    FOR EACH ROW EXECUTE FUNCTION interventions_shared_version();
