-- Set when a try's call to record the disclosure failed on Handoff's side
-- and may have been recorded all the same. The try is given back, but the
-- next one checks the consent before it records: a record under the same
-- request id answers from the stored one, without looking at the consent.
-- A replay records under a new request id and clears it.
ALTER TABLE deliveries ADD COLUMN record_unsure boolean NOT NULL DEFAULT false;
