-- Whom a FULL subscription's data is cut for, fixed from the creator's role
-- when it subscribed: 'ehr' (the EHR integration: referrals, and
-- interventions as the API shows them to outside systems) or 'reminders'
-- (the reminder automation: reminders). A notification never carries more
-- than its owner may read through the API. Subscriptions made before this
-- column existed, and every ID_ONLY one, have '' and get identifiers only.
ALTER TABLE subscriptions ADD COLUMN audience text NOT NULL DEFAULT '';
