-- How often the delivery was claimed, never reset: with the attempt
-- count, the fence of an attempt's outcome. The attempt count starts
-- again at a replay and goes back by one when a try fails on Handoff's
-- side, so a sender whose lease ran out could match a later claim by it
-- and record its stale outcome over that claim's.
--
-- And how many tries in a row failed on Handoff's side (the consent could
-- not be checked, the sender's token refused): the wait before the next
-- grows with it, where the attempt count, given back, does not.
--
-- Constant defaults: added without a rewrite.
ALTER TABLE deliveries ADD COLUMN claims bigint NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN own_failures integer NOT NULL DEFAULT 0;
