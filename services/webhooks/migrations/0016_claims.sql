-- How often the delivery was claimed, never reset: the fence of an
-- attempt's outcome. The attempt count starts again at a replay and goes
-- back by one when a try fails on Handoff's side, so a sender whose lease
-- ran out could match a later claim by it and record its stale outcome
-- over that claim's. A constant default: added without a rewrite.
ALTER TABLE deliveries ADD COLUMN claims bigint NOT NULL DEFAULT 0;
