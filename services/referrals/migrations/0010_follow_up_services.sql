-- The further services a person received after entering treatment, as
-- the program reports them, for the HEDIS IET engagement measure (two
-- more within 34 days of entry). Append-only like the referral's history
-- (pgdb.secure); one row per service time, so a report sent twice is
-- recorded once. The referral keeps the count and the engagement time
-- beside its other outcomes, so reads and the summary need no join.
-- Constant defaults: adding the columns rewrites nothing.
ALTER TABLE referrals ADD COLUMN IF NOT EXISTS follow_up_services integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS engagement_time timestamptz;

CREATE TABLE IF NOT EXISTS referral_services (
    clinic        text        NOT NULL,
    referral_id   text        NOT NULL,
    service_time  timestamptz NOT NULL,
    recorded_by   text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, referral_id, service_time),
    FOREIGN KEY (clinic, referral_id) REFERENCES referrals (clinic, id)
);
