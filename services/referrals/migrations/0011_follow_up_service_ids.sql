-- A service reported first without the program's id for it (keyed by its
-- time) and then again with the id: the id names that service, so that it
-- counts once and a report or retraction by either finds it. Append-only
-- like the services themselves (pgdb.secure).
CREATE TABLE IF NOT EXISTS referral_service_ids (
    clinic       text        NOT NULL,
    referral_id  text        NOT NULL,
    service_id   text        NOT NULL,
    service_key  text        NOT NULL,
    create_time  timestamptz NOT NULL,
    PRIMARY KEY (clinic, referral_id, service_id),
    -- One id per service recorded without one.
    UNIQUE (clinic, referral_id, service_key),
    FOREIGN KEY (clinic, referral_id, service_key) REFERENCES referral_services (clinic, referral_id, service_key)
);
