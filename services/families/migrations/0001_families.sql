-- The care circle. Client-owned nested data (loved one, members, coverage)
-- is kept as JSON in `doc`; the columns the service filters and reasons on
-- sit beside it.
CREATE TABLE families (
    clinic              text        NOT NULL,
    id                  text        NOT NULL,
    doc                 jsonb       NOT NULL,
    counselor           text        NOT NULL,
    state               smallint    NOT NULL,
    urgent              boolean     NOT NULL DEFAULT false,
    first_contact_time  timestamptz NOT NULL,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    version             bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id)
);
CREATE INDEX families_counselor ON families (clinic, counselor, id);

CREATE TABLE barriers (
    clinic       text        NOT NULL,
    family_id    text        NOT NULL,
    id           text        NOT NULL,
    kind         smallint    NOT NULL,
    notes        text        NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    resolve_time timestamptz,
    version      bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, family_id, id),
    FOREIGN KEY (clinic, family_id) REFERENCES families (clinic, id) ON DELETE CASCADE
);

-- Append-only: the service never updates or deletes a warning sign.
CREATE TABLE warning_signs (
    clinic       text        NOT NULL,
    family_id    text        NOT NULL,
    id           text        NOT NULL,
    kind         smallint    NOT NULL,
    occur_time   timestamptz NOT NULL,
    notes        text        NOT NULL DEFAULT '',
    recorded_by  text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, family_id, id),
    FOREIGN KEY (clinic, family_id) REFERENCES families (clinic, id) ON DELETE CASCADE
);

-- Append-only; the newest screen is the family's current one.
CREATE TABLE safety_screens (
    clinic         text        NOT NULL,
    family_id      text        NOT NULL,
    id             text        NOT NULL,
    result         smallint    NOT NULL,
    safety_plan    boolean     NOT NULL,
    notes          text        NOT NULL DEFAULT '',
    screened_by    text        NOT NULL,
    screen_time    timestamptz NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, family_id, id),
    FOREIGN KEY (clinic, family_id) REFERENCES families (clinic, id) ON DELETE CASCADE
);
CREATE INDEX safety_screens_newest ON safety_screens (clinic, family_id, screen_time DESC, id DESC);

CREATE TABLE boundaries (
    clinic               text        NOT NULL,
    family_id            text        NOT NULL,
    id                   text        NOT NULL,
    category             smallint    NOT NULL,
    wording              text        NOT NULL,
    consequence          text        NOT NULL DEFAULT '',
    state                smallint    NOT NULL,
    reinforcement_count  integer     NOT NULL DEFAULT 0,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    version              bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, family_id, id),
    FOREIGN KEY (clinic, family_id) REFERENCES families (clinic, id) ON DELETE CASCADE
);

-- Append-only history of every boundary transition and reinforcement.
CREATE TABLE boundary_events (
    seq          bigserial   PRIMARY KEY,
    clinic       text        NOT NULL,
    family_id    text        NOT NULL,
    boundary_id  text        NOT NULL,
    from_state   smallint    NOT NULL,
    to_state     smallint    NOT NULL,
    actor        text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    event_time   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (clinic, family_id, boundary_id) REFERENCES boundaries (clinic, family_id, id) ON DELETE CASCADE
);
CREATE INDEX boundary_events_boundary ON boundary_events (clinic, family_id, boundary_id, seq);
