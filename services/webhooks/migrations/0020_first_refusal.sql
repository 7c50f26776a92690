-- When the receiver first refused the delivery in the current run of
-- refusals (NULL while none): SenderConfig.RefusedFor is counted from it,
-- not from the first try, so that refusals after an outage on Handoff's
-- side still get their grace. Cleared when an answer ends the run, and
-- when a try Handoff could not make interrupts it (the time the receiver
-- was not asked is not its own): the next refusal starts it again.
ALTER TABLE deliveries ADD COLUMN first_refusal_time timestamptz;
