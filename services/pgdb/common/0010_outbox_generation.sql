-- The release generation of the code that wrote the event (outbox.Generation):
-- a relay of an older generation leaves a young event of a newer one to a
-- relay that knows it, instead of passing over what it does not recognise.
-- 0 for events written before generations were kept.
ALTER TABLE outbox ADD COLUMN generation integer NOT NULL DEFAULT 0;
