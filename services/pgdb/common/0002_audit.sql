-- The audit trail: one row for every call that reads or changes a clinic's
-- data. The application role may insert and read rows, never change or
-- delete them (see pgdb.secure).
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    clinic      text        NOT NULL,
    event_time  timestamptz NOT NULL DEFAULT now(),
    subject     text        NOT NULL,
    roles       text[]      NOT NULL,
    method      text        NOT NULL,
    resource    text        NOT NULL DEFAULT '',
    outcome     text        NOT NULL,
    request_id  text        NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_clinic_time ON audit_log (clinic, id);
