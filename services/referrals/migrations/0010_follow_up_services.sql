-- The further services a person received after entering treatment, as
-- the program reports them, for the HEDIS IET engagement measure (two
-- more on the days after entry, through the 34th). Append-only like the
-- referral's history (pgdb.secure). A service is keyed by the program's
-- own id for it, or by its time without one, so that a report sent twice
-- is recorded once. Its day after entry is read, with the entry's, in the
-- zone the referral keeps (follow_up_zone, the first one a report named;
-- UTC until then), when the count is made. The referral keeps the count
-- and the engagement time beside its other outcomes, so reads and the
-- summary need no join. Constant defaults: adding the columns rewrites nothing.
ALTER TABLE referrals ADD COLUMN IF NOT EXISTS follow_up_services integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS engagement_time timestamptz,
    -- The first zone a report named: every service's day is read in it.
    ADD COLUMN IF NOT EXISTS follow_up_zone text;

CREATE TABLE IF NOT EXISTS referral_services (
    clinic           text        NOT NULL,
    referral_id      text        NOT NULL,
    service_key      text        NOT NULL,
    service_time     timestamptz NOT NULL,
    recorded_by      text        NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, referral_id, service_key),
    FOREIGN KEY (clinic, referral_id) REFERENCES referrals (clinic, id)
);

-- A service recorded in error is retracted, not deleted: one row per
-- service, append-only; the referral's count and engagement are computed
-- again without it.
CREATE TABLE IF NOT EXISTS referral_service_retractions (
    clinic        text        NOT NULL,
    referral_id   text        NOT NULL,
    service_key   text        NOT NULL,
    reason        text        NOT NULL,
    retracted_by  text        NOT NULL,
    retract_time  timestamptz NOT NULL,
    PRIMARY KEY (clinic, referral_id, service_key),
    FOREIGN KEY (clinic, referral_id, service_key) REFERENCES referral_services (clinic, referral_id, service_key)
);
