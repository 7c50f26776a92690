-- An outside system (the EHR, under an identity consent) sees only part of
-- a family, and that part has a version and an update time of its own:
-- the family's own would change with an overdose, a coverage change or
-- entering treatment, which the part it sees leaves out, and so tell it
-- that one happened (by the etag, or by filtering on update_time).
-- It is a counter of its own, moved by one for each change outsiders can
-- see, so that its steps do not count the changes they cannot. NULL means
-- the same as version and update_time, as for every row not written since
-- this column came.
ALTER TABLE families ADD COLUMN shared_version bigint,
    ADD COLUMN shared_update_time timestamptz,
    -- The version at which the writer last weighed what outsiders see.
    ADD COLUMN shared_checked bigint;

-- A write that did not weigh it (a replica a release behind, during a
-- rolling update, knows nothing of these columns) counts as changing what
-- outsiders see, so that a change they can see is never hidden behind an
-- old etag.
CREATE FUNCTION families_shared_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version <> OLD.version AND NEW.shared_checked IS DISTINCT FROM NEW.version THEN
        NEW.shared_version := COALESCE(OLD.shared_version, OLD.version) + 1;
        NEW.shared_update_time := NEW.update_time;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER families_shared BEFORE UPDATE ON families
    FOR EACH ROW EXECUTE FUNCTION families_shared_version();
