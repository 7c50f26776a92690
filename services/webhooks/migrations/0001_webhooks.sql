-- Webhook subscriptions. The secret signs notifications; the service never
-- logs it and returns it only when the subscription is created.
CREATE TABLE subscriptions (
    clinic       text        NOT NULL,
    id           text        NOT NULL,
    url          text        NOT NULL,
    topics       smallint[]  NOT NULL,
    payload      smallint    NOT NULL,
    owner        text        NOT NULL,
    secret       text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic, id)
);
CREATE INDEX subscriptions_owner ON subscriptions (clinic, owner, id);

-- One notification of one outbox event to one subscription. seq is the
-- order of enqueueing, which per resource is the order of the source
-- outbox: the sender never sends a row while an earlier PENDING row of the
-- same subscription and resource waits.
CREATE TABLE deliveries (
    seq                bigserial   NOT NULL UNIQUE,
    clinic             text        NOT NULL,
    subscription_id    text        NOT NULL,
    id                 text        NOT NULL,
    -- The outbox the event came from (its schema) and its id there: a
    -- redelivered outbox event enqueues nothing twice.
    source             text        NOT NULL,
    outbox_id          bigint      NOT NULL,
    event_type         text        NOT NULL,
    topic              smallint    NOT NULL,
    resource           text        NOT NULL,
    -- The family whose records the event is about ('' if none): FULL
    -- payloads are disclosed under its consents.
    family             text        NOT NULL DEFAULT '',
    -- The event payload (a serialized google.protobuf.Any), kept only for
    -- FULL subscriptions.
    payload            bytea,
    state              smallint    NOT NULL DEFAULT 1,
    attempts           integer     NOT NULL DEFAULT 0,
    next_attempt_time  timestamptz NOT NULL DEFAULT now(),
    last_error         text        NOT NULL DEFAULT '',
    create_time        timestamptz NOT NULL DEFAULT now(),
    deliver_time       timestamptz,
    PRIMARY KEY (clinic, subscription_id, id),
    UNIQUE (source, outbox_id, subscription_id),
    FOREIGN KEY (clinic, subscription_id) REFERENCES subscriptions (clinic, id) ON DELETE CASCADE
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_time, seq) WHERE state = 1;
CREATE INDEX deliveries_order ON deliveries (subscription_id, resource, seq) WHERE state = 1;
CREATE INDEX deliveries_list ON deliveries (clinic, subscription_id, seq);
