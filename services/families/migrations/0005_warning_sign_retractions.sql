-- A warning sign recorded in error is retracted, not changed: the sign
-- stays as it was recorded and this row says who took it back, when and
-- why. Append-only like the signs (pgdb.secure), one row per sign; the
-- primary key makes a second retraction fail rather than overwrite the
-- first.
CREATE TABLE warning_sign_retractions (
    clinic        text        NOT NULL,
    family_id     text        NOT NULL,
    sign_id       text        NOT NULL,
    reason        text        NOT NULL,
    retracted_by  text        NOT NULL,
    retract_time  timestamptz NOT NULL,
    PRIMARY KEY (clinic, family_id, sign_id),
    FOREIGN KEY (clinic, family_id, sign_id) REFERENCES warning_signs (clinic, family_id, id) ON DELETE CASCADE
);
