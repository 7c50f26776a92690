-- Whom a FULL subscription's data is cut for, fixed from the creator's role
-- when it subscribed: 'ehr' (the EHR integration: referrals, and
-- interventions as the API shows them to outside systems) or 'reminders'
-- (the reminder automation: reminders). A notification never carries more
-- than its owner may read through the API. ID_ONLY subscriptions have ''.
ALTER TABLE subscriptions ADD COLUMN audience text NOT NULL DEFAULT '';

-- The role of whoever made an earlier FULL subscription was not kept, so
-- its data cannot be cut for it: it becomes ID_ONLY (2 -> 1), which the API
-- then reports, rather than staying FULL in name and sending identifiers.
-- Its owner subscribes again to receive full payloads.
UPDATE subscriptions SET payload = 1 WHERE payload = 2;
