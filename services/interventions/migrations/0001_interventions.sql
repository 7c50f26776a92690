-- btree_gist lets one exclusion constraint compare counselors (text, by
-- equality) and meeting times (ranges, by overlap). It is trusted since
-- PostgreSQL 13, so a database owner may create it.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;

CREATE TABLE interventions (
    clinic                 text        NOT NULL,
    id                     text        NOT NULL,
    family                 text        NOT NULL,
    counselor              text        NOT NULL,
    level                  smallint    NOT NULL,
    start_time             timestamptz,
    duration_seconds       integer     NOT NULL,
    -- start_time plus the duration; kept as a column because the exclusion
    -- constraint needs an immutable expression.
    end_time               timestamptz,
    time_zone              text        NOT NULL,
    -- Place, participants, checklist, outcome, check-ins and notes, as JSON.
    doc                    jsonb       NOT NULL,
    state                  smallint    NOT NULL,
    reschedule_count       integer     NOT NULL DEFAULT 0,
    create_time            timestamptz NOT NULL DEFAULT now(),
    update_time            timestamptz NOT NULL DEFAULT now(),
    version                bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id),
    -- A counselor cannot be in two scheduled meetings at once. Enforced here
    -- so that two racing requests cannot both win.
    CONSTRAINT counselor_not_double_booked EXCLUDE USING gist (
        clinic WITH =, counselor WITH =,
        tstzrange(start_time, end_time) WITH &&
    ) WHERE (state = 2)
);
CREATE INDEX interventions_family ON interventions (clinic, family, id);

-- Talking points: built-in ones (clinic '') ship with Handoff; clinics add
-- their own.
CREATE TABLE talking_points (
    clinic        text        NOT NULL,
    id            text        NOT NULL,
    barrier_kind  smallint    NOT NULL,
    prompt        text        NOT NULL,
    fact          text        NOT NULL DEFAULT '',
    source        text        NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    version       bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id)
);

CREATE TABLE reminders (
    clinic             text        NOT NULL,
    id                 text        NOT NULL,
    recipient_kind     smallint    NOT NULL,
    recipient_id       text        NOT NULL DEFAULT '',
    recipient_family   text        NOT NULL DEFAULT '',
    channel            smallint    NOT NULL,
    due_time           timestamptz NOT NULL,
    kind               smallint    NOT NULL,
    related_resource   text        NOT NULL DEFAULT '',
    message            text        NOT NULL,
    state              smallint    NOT NULL,
    claimed_by         text        NOT NULL DEFAULT '',
    lease_expire_time  timestamptz,
    attempt_count      integer     NOT NULL DEFAULT 0,
    failure_reason     text        NOT NULL DEFAULT '',
    cancel_reason      text        NOT NULL DEFAULT '',
    deliver_time       timestamptz,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    version            bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id)
);
CREATE INDEX reminders_due ON reminders (clinic, due_time, id);
CREATE INDEX reminders_related ON reminders (clinic, related_resource);
