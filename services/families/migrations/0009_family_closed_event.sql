-- A family moved to CLOSED announces it (family.closed, outbox generation
-- 6), and the worker stops what still runs for it: its meetings, boundary
-- follow-up, held places and pending reminders. Written by the database,
-- not the service, so that a replica a release behind, during a rolling
-- update, cannot close a family unannounced; and written here once for
-- every family closed before, when closing stopped nothing.
--
-- The payload is what outbox.Write stores: a google.protobuf.Any holding a
-- handoff.families.v1.Family with its name alone, in protobuf's encoding
-- (a field's tag byte, its length as a varint, its bytes).
-- Each function resolves names in this schema whoever calls it (an
-- operator's session with another search_path among them).
CREATE FUNCTION families_pb_varint(n integer) RETURNS bytea LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
    out bytea := '';
BEGIN
    LOOP
        IF n < 128 THEN
            RETURN out || set_byte('\x00'::bytea, 0, n);
        END IF;
        out := out || set_byte('\x00'::bytea, 0, (n & 127) | 128);
        n := n >> 7;
    END LOOP;
END $$;

CREATE FUNCTION families_pb_field(tag integer, value bytea) RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT set_byte('\x00'::bytea, 0, tag) || families_pb_varint(length(value)) || value
$$;

-- The family's name in an Any of a Family (Any: type_url 1, value 2;
-- Family: name 1; both fields of wire type 2, tags 0x0a and 0x12).
CREATE FUNCTION families_name_only(clinic text, id text) RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT families_pb_field(10, convert_to('type.googleapis.com/handoff.families.v1.Family', 'UTF8'))
        || families_pb_field(18, families_pb_field(10, convert_to('clinics/' || clinic || '/families/' || id, 'UTF8')))
$$;

CREATE FUNCTION families_announce_closed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO outbox (clinic, event_type, resource, payload, generation)
    VALUES (NEW.clinic, 'handoff.families.v1.family.closed', 'clinics/' || NEW.clinic || '/families/' || NEW.id,
        families_name_only(NEW.clinic, NEW.id), 6);
    RETURN NULL;
END $$;

CREATE TRIGGER families_closed AFTER UPDATE OF state ON families FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM 3 AND NEW.state = 3)
    EXECUTE FUNCTION families_announce_closed();

INSERT INTO outbox (clinic, event_type, resource, payload, generation)
SELECT clinic, 'handoff.families.v1.family.closed', 'clinics/' || clinic || '/families/' || id, families_name_only(clinic, id), 6
FROM families WHERE state = 3 ORDER BY clinic, id;
