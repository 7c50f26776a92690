-- The webhook sink reads the outbox as a consumer of its own (outbox.Sink),
-- with its own mark: EHR and reminder notifications need nothing from
-- Temporal, and no longer wait on the Temporal dispatch (a Temporal
-- outage, or one workflow that takes no update, held them for as long).
--
-- Every service write adds an outbox row, so this holds its lock only for
-- a moment: the column comes with a constant default, which PostgreSQL
-- records without rewriting the table, and which marks every event there
-- as taken by the sink (those the dispatch delivered were enqueued with
-- it); new events get none. Only the few the dispatch has not delivered,
-- found through outbox_pending, are left for the sink. Its index is built
-- apart, concurrently (0014).
ALTER TABLE outbox ADD COLUMN sink_delivered_at timestamptz DEFAULT '-infinity';
ALTER TABLE outbox ALTER COLUMN sink_delivered_at DROP DEFAULT;
UPDATE outbox SET sink_delivered_at = NULL WHERE delivered_at IS NULL;
