-- The program directory, shaped after Open Referral HSDS. Descriptive fields
-- live in `doc`; what matching and capacity work on are columns.
CREATE TABLE programs (
    clinic                text        NOT NULL,
    id                    text        NOT NULL,
    doc                   jsonb       NOT NULL,
    services              smallint[]  NOT NULL,
    payments              smallint[]  NOT NULL DEFAULT '{}',
    telehealth            boolean     NOT NULL DEFAULT false,
    same_day_intake       boolean     NOT NULL DEFAULT false,
    same_day_induction    boolean     NOT NULL DEFAULT false,
    locality              text        NOT NULL DEFAULT '',
    postal_code           text        NOT NULL DEFAULT '',
    languages             text[]      NOT NULL DEFAULT '{}',
    -- Capacity: free slots nobody holds, and slots held for interventions.
    -- The checks make overselling impossible whatever the code does.
    available_slots       integer     NOT NULL DEFAULT 0 CHECK (available_slots >= 0),
    held_slots            integer     NOT NULL DEFAULT 0 CHECK (held_slots >= 0),
    waitlist              boolean     NOT NULL DEFAULT false,
    capacity_update_time  timestamptz,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    version               bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id)
);
CREATE INDEX programs_services ON programs USING gin (services);

CREATE TABLE holds (
    clinic          text        NOT NULL,
    id              text        NOT NULL,
    program_id      text        NOT NULL,
    service_kind    smallint    NOT NULL,
    family          text        NOT NULL,
    intervention    text        NOT NULL DEFAULT '',
    expire_time     timestamptz NOT NULL,
    state           smallint    NOT NULL,
    referral        text        NOT NULL DEFAULT '',
    release_reason  text        NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    version         bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id),
    FOREIGN KEY (clinic, program_id) REFERENCES programs (clinic, id)
);
CREATE INDEX holds_held_by_expiry ON holds (expire_time) WHERE state = 1;
CREATE INDEX holds_program ON holds (clinic, program_id) WHERE state = 1;

CREATE TABLE referrals (
    clinic                text        NOT NULL,
    id                    text        NOT NULL,
    family                text        NOT NULL,
    subject_kind          smallint    NOT NULL,
    member_id             text        NOT NULL DEFAULT '',
    service_kind          smallint    NOT NULL,
    program_id            text        NOT NULL,
    urgency               smallint    NOT NULL,
    reason                text        NOT NULL,
    hold                  text        NOT NULL DEFAULT '',
    intervention          text        NOT NULL DEFAULT '',
    appointment           jsonb,
    state                 smallint    NOT NULL,
    rejection_reason      smallint    NOT NULL DEFAULT 0,
    rejection_details     text        NOT NULL DEFAULT '',
    first_contact_time    timestamptz,
    treatment_entry_time  timestamptz,
    no_show_count         integer     NOT NULL DEFAULT 0,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    version               bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, id),
    FOREIGN KEY (clinic, program_id) REFERENCES programs (clinic, id)
);
CREATE INDEX referrals_family ON referrals (clinic, family, id);

-- Append-only history of every referral transition.
CREATE TABLE referral_events (
    seq          bigserial   PRIMARY KEY,
    clinic       text        NOT NULL,
    referral_id  text        NOT NULL,
    from_state   smallint    NOT NULL,
    to_state     smallint    NOT NULL,
    actor        text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    event_time   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (clinic, referral_id) REFERENCES referrals (clinic, id)
);
CREATE INDEX referral_events_referral ON referral_events (clinic, referral_id, seq);
