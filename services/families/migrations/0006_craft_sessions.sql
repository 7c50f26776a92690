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
