-- The trace of the request that wrote the event, so the work the event
-- starts (a workflow, an update, a signal) joins the same trace.
ALTER TABLE outbox ADD COLUMN trace_context jsonb;
