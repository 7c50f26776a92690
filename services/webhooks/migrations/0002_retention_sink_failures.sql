-- Withdrawing a resource's pending notifications (a reminder delivered or
-- cancelled) looks them up by clinic and resource. The predicate is the
-- literal PENDING state (1), which the query must repeat as a literal.
CREATE INDEX deliveries_pending_resource ON deliveries (clinic, resource, topic) WHERE state = 1;

-- A delivered or withdrawn notification keeps no copy of the event: FULL
-- payloads are kept only while they may still be sent (PENDING, and DEAD
-- so that a replay can send them). Older rows are cleared here.
UPDATE deliveries SET payload = NULL WHERE state IN (2, 4) AND payload IS NOT NULL;

-- Outbox events the sink could never enqueue (a deterministic failure,
-- such as a payload that does not encode), set aside so that they do not
-- hold back every later event of their outbox. Identifiers and the error
-- only, never the payload.
CREATE TABLE sink_failures (
    clinic         text        NOT NULL,
    source         text        NOT NULL,
    outbox_id      bigint      NOT NULL,
    event_type     text        NOT NULL,
    error          text        NOT NULL,
    failure_count  integer     NOT NULL DEFAULT 1,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, outbox_id)
);
CREATE INDEX sink_failures_clinic ON sink_failures (clinic, create_time);
