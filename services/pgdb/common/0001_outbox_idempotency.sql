-- Events announcing every change, written in the same transaction as the
-- change and delivered later (to Temporal, webhooks, the EHR).
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    clinic        text        NOT NULL,
    event_type    text        NOT NULL,
    resource      text        NOT NULL,
    payload       bytea       NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL;

-- Request ids of mutating calls with the response they produced (AIP-155):
-- a retry returns the stored response instead of acting twice.
CREATE TABLE idempotency_keys (
    clinic        text        NOT NULL,
    request_id    text        NOT NULL,
    method        text        NOT NULL,
    request_hash  bytea       NOT NULL,
    response      bytea,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, request_id)
);
