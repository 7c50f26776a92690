package interventions

import (
	"slices"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
)

// Policy says which roles may call each method (least privilege).
func Policy() grpcserver.Policy {
	staff := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin}
	p := grpcserver.Policy{}
	set := func(roles []auth.Role, methods ...string) {
		for _, m := range methods {
			p[svc+m] = roles
		}
	}
	set(staff, "CreateIntervention", "UpdateIntervention", "DeleteIntervention", "ScheduleIntervention",
		"RescheduleIntervention", "CancelIntervention", "RecordOutcome", "RecordCheckIn", "GetTalkingPoints")
	// The worker reads interventions, ticks the hold on the checklist and
	// proposes the next-level draft after a refusal.
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}, "GetIntervention", "ListInterventions",
		"UpdateChecklistItem")
	p[svc+"CreateIntervention"] = []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}
	// The worker cancels the open interventions of a family whose record
	// was deleted (the FamilyDeleted workflow).
	p[svc+"CancelIntervention"] = slices.Concat(p[svc+"CancelIntervention"], []auth.Role{auth.RoleWorker})
	// The EHR sees appointments (FHIR Appointment).
	// Both are disclosures, checked against consent.
	p[svc+"GetIntervention"] = slices.Concat(p[svc+"GetIntervention"], []auth.Role{auth.RoleEHR})
	p[svc+"ListInterventions"] = slices.Concat(p[svc+"ListInterventions"], []auth.Role{auth.RoleEHR})
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin}, "ListTalkingPoints")
	set([]auth.Role{auth.RoleClinicAdmin}, "CreateTalkingPoint", "DeleteTalkingPoint")
	// Reminders: workflows create and cancel them; automation delivers them;
	// the clinic's staff read them all, as they read its interventions (the
	// app shows a counselor theirs by filter).
	set([]auth.Role{auth.RoleWorker}, "CreateReminder")
	set([]auth.Role{auth.RoleWorker, auth.RoleClinicAdmin}, "CancelReminder")
	set([]auth.Role{auth.RoleReminders, auth.RoleWorker, auth.RoleCounselor, auth.RoleClinicAdmin}, "GetReminder", "ListReminders")
	set([]auth.Role{auth.RoleReminders}, "ClaimReminder", "CompleteReminder")
	// Calendar feeds: staff make, list and revoke their own; a calendar app
	// holding a feed's token reads it, and nothing else.
	set(staff, "CreateCalendarFeed", "ListCalendarFeeds", "DeleteCalendarFeed")
	set([]auth.Role{auth.RoleCalendarFeed}, "ExportCalendarFeed")
	// The audit trail is for administrators.
	p[svc+"ListAuditEvents"] = []auth.Role{auth.RoleClinicAdmin}
	return p
}
