-- Whether the subscription's owner is an outside system (the EHR
-- integration, consentgate.Outsider): its notifications about a family's
-- records go only while a consent of that family covers them, as its reads
-- through the API do. Earlier subscriptions to referral or appointment
-- topics kept no record of their owner's role: they are taken for the
-- EHR's, whose notifications then wait on consent, rather than let an
-- outside system hear of a record no consent covers.
ALTER TABLE subscriptions ADD COLUMN outsider boolean NOT NULL DEFAULT false;
UPDATE subscriptions SET outsider = true WHERE topics && ARRAY[1, 2]::smallint[];
