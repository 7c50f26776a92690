-- Consent to disclose (42 CFR Part 2) and the accounting of disclosures.
-- Neither references families: a signed consent and the record of what was
-- disclosed under it outlive the family (retention), and the application
-- role may not delete them (see pgdb.secure).
CREATE TABLE consents (
    clinic              text        NOT NULL,
    family_id           text        NOT NULL,
    id                  text        NOT NULL,
    discloser           text        NOT NULL,
    information         smallint[]  NOT NULL,
    recipients          text[]      NOT NULL,
    treating_providers  boolean     NOT NULL,
    purposes            smallint[]  NOT NULL,
    expire_time         timestamptz NOT NULL,
    signer              text        NOT NULL,
    sign_time           timestamptz NOT NULL,
    recorder            text        NOT NULL,
    -- Set when the whole consent is revoked.
    revoke_time         timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    version             bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (clinic, family_id, id),
    CHECK (cardinality(recipients) > 0 OR treating_providers),
    CHECK (sign_time < expire_time)
);

-- Append-only: every revocation, whole (recipient '') or per recipient.
CREATE TABLE consent_revocations (
    seq          bigserial   PRIMARY KEY,
    clinic       text        NOT NULL,
    family_id    text        NOT NULL,
    consent_id   text        NOT NULL,
    recipient    text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    recorder     text        NOT NULL,
    revoke_time  timestamptz NOT NULL,
    FOREIGN KEY (clinic, family_id, consent_id) REFERENCES consents (clinic, family_id, id)
);
CREATE INDEX consent_revocations_consent ON consent_revocations (clinic, family_id, consent_id, recipient);

-- Append-only: the accounting of disclosures (42 CFR 2.24).
CREATE TABLE disclosures (
    clinic         text        NOT NULL,
    family_id      text        NOT NULL,
    id             text        NOT NULL,
    recipient      text        NOT NULL,
    information    smallint    NOT NULL,
    purpose        smallint    NOT NULL,
    resource       text        NOT NULL,
    channel        smallint    NOT NULL,
    consent_id     text        NOT NULL,
    discloser      text        NOT NULL,
    disclose_time  timestamptz NOT NULL,
    PRIMARY KEY (clinic, family_id, id)
);
