-- How many answers in a row refused the delivery (400, 401, 403, 404):
-- a few end it, counted apart from its attempts so that a receiver's
-- earlier outage (503s) does not make its first refusal the last. A try
-- Handoff could not make (its own side failed) leaves the count as it is.
ALTER TABLE deliveries ADD COLUMN refusals integer NOT NULL DEFAULT 0;
