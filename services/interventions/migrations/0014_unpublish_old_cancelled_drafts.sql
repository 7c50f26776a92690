-- Migration 0012 unpublished the drafts that 0007 took as published, but
-- not the drafts cancelled before 0007: a firmer meeting withdrawn after a
-- yes, say. Outside systems still saw those as cancelled meetings, and a
-- draft withdrawn that way tells how the loved one answered. A meeting
-- cancelled before 0007 is unpublished unless it was scheduled: the audit
-- trail, which is kept, records every ScheduleIntervention that succeeded
-- under the meeting's name, and only a scheduled meeting is rescheduled.
UPDATE interventions i SET published = false
FROM schema_migrations m
WHERE m.id = 'interventions/0007_published.sql'
    AND i.state = 4 -- CANCELLED
    AND i.published AND i.create_time < m.applied_at AND i.reschedule_count = 0
    AND NOT EXISTS (SELECT FROM audit_log a
        WHERE a.clinic = i.clinic AND a.resource = 'clinics/' || i.clinic || '/interventions/' || i.id
            AND a.method = '/handoff.interventions.v1.InterventionsService/ScheduleIntervention' AND a.outcome = 'OK');
