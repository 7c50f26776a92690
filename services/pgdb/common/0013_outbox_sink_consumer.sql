-- The webhook sink reads the outbox as a consumer of its own (outbox.Sink),
-- with its own mark: EHR and reminder notifications need nothing from
-- Temporal, and no longer wait on the Temporal dispatch (a Temporal
-- outage, or one workflow that takes no update, held them for as long).
-- Events the dispatch delivered before were enqueued with it.
ALTER TABLE outbox ADD COLUMN sink_delivered_at timestamptz;
UPDATE outbox SET sink_delivered_at = delivered_at WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_sink_pending ON outbox (id) WHERE sink_delivered_at IS NULL;
