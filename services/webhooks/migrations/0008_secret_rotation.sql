-- A rotated secret signs notifications beside the new one until
-- previous_secret_expire_time, so that the receiver can switch without
-- refusing any. Sealed like secret.
ALTER TABLE subscriptions ADD COLUMN previous_secret text, ADD COLUMN previous_secret_expire_time timestamptz;
