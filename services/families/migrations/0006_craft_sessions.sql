-- CRAFT sessions: the counselor coaching the family's concerned members.
-- Append-only like the screens (pgdb.secure); a family's progress is read
-- from its sessions (the primary key finds a family's).
CREATE TABLE craft_sessions (
    clinic        text        NOT NULL,
    family_id     text        NOT NULL,
    id            text        NOT NULL,
    member_ids    text[]      NOT NULL,
    topics        smallint[]  NOT NULL,
    notes         text        NOT NULL DEFAULT '',
    counselor     text        NOT NULL,
    session_time  timestamptz NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, family_id, id),
    FOREIGN KEY (clinic, family_id) REFERENCES families (clinic, id) ON DELETE CASCADE
);

-- A session recorded in error is retracted, not changed or deleted, as a
-- warning sign is: one row per session, append-only.
CREATE TABLE craft_session_retractions (
    clinic        text        NOT NULL,
    family_id     text        NOT NULL,
    session_id    text        NOT NULL,
    reason        text        NOT NULL,
    retracted_by  text        NOT NULL,
    retract_time  timestamptz NOT NULL,
    PRIMARY KEY (clinic, family_id, session_id),
    FOREIGN KEY (clinic, family_id, session_id) REFERENCES craft_sessions (clinic, family_id, id) ON DELETE CASCADE
);
