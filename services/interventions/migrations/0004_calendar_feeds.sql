-- Calendar feeds: a secret address per feed at which calendar apps read a
-- counselor's interventions. Only the SHA-256 of the feed's token is kept,
-- so a copy of the database cannot be used to read anyone's calendar.
CREATE TABLE calendar_feeds (
    clinic       text        NOT NULL,
    id           text        NOT NULL,
    owner        text        NOT NULL,
    token_hash   bytea       NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, id)
);
CREATE INDEX calendar_feeds_owner ON calendar_feeds (clinic, owner, id);

-- A feed reads one counselor's meetings by time.
CREATE INDEX interventions_counselor_start ON interventions (clinic, counselor, start_time);
