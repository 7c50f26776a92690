package families

import (
	"slices"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
)

// Policy says which roles may call each method (least privilege). The
// README's role table is written from these maps.
func Policy() grpcserver.Policy {
	staff := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin}
	readers := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}
	p := grpcserver.Policy{}
	// The EHR reads the loved one and members (FHIR Patient and
	// RelatedPerson); the worker reads one family's contact preferences
	// and barriers at a time, by the name its workflow was given. It
	// lists none: no workflow does, and a leaked worker token, good for
	// every clinic, would otherwise page out every family of each.
	p[svc+"GetFamily"] = slices.Concat(readers, []auth.Role{auth.RoleEHR})
	p[svc+"ListFamilies"] = slices.Concat(staff, []auth.Role{auth.RoleEHR})
	// The reminder automation (and the interventions service, as it
	// claims a reminder) reads who may still be contacted and where, and
	// nothing more (familyForCaller).
	p[svc+"GetFamily"] = slices.Concat(p[svc+"GetFamily"], []auth.Role{auth.RoleReminders})
	// A counselor's calendar feed shows their clients' intake appointments.
	p[svc+"ListFamilies"] = slices.Concat(p[svc+"ListFamilies"], []auth.Role{auth.RoleCalendarReader})
	// The worker lists what its workflows read (talking points, overdose
	// answers, the boundaries to reinforce); single reads and the screens'
	// history are the clinic staff's.
	for _, m := range []string{"ListBarriers", "ListWarningSigns", "ListBoundaries"} {
		p[svc+m] = readers
	}
	for _, m := range []string{"GetBarrier", "GetWarningSign", "ListSafetyScreens", "GetBoundary",
		"GetCraftSession", "ListCraftSessions", "GetCraftProgress"} {
		p[svc+m] = staff
	}
	for _, m := range []string{"CreateFamily", "UpdateFamily", "CreateBarrier", "UpdateBarrier",
		"DeleteBarrier", "ResolveBarrier", "CreateWarningSign", "RetractWarningSign", "CreateSafetyScreen", "CreateCraftSession", "RetractCraftSession", "CreateBoundary",
		"UpdateBoundary", "AgreeBoundary", "ActivateBoundary", "RetireBoundary"} {
		p[svc+m] = staff
	}
	// The boundary workflow records reinforcements after a declined
	// intervention.
	p[svc+"ReinforceBoundary"] = []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}
	// And records that the loved one entered treatment, when a referral
	// says so.
	p[svc+"RecordTreatmentEntry"] = []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}
	p[svc+"DeleteFamily"] = []auth.Role{auth.RoleClinicAdmin}
	// Consent (42 CFR Part 2): staff record and revoke; the EHR reads
	// consents (FHIR Consent) so it knows what it may ask for.
	for _, m := range []string{"CreateConsent", "RevokeConsent"} {
		p[svc+m] = staff
	}
	for _, m := range []string{"GetConsent", "ListConsents"} {
		p[svc+m] = slices.Concat(staff, []auth.Role{auth.RoleEHR})
	}
	// Disclosures are checked and recorded by whoever discloses: staff (a
	// referral sent by fax), the EHR for itself (the other services ask
	// with the EHR's own token) and the webhook sender.
	p[svc+"CreateDisclosure"] = slices.Concat(staff, []auth.Role{auth.RoleEHR, auth.RoleWebhookSender})
	p[svc+"ListDisclosures"] = staff
	// The services that hold the EHR's referrals and appointments filter
	// and record its lists with these, with the EHR's own token.
	p[svc+"ListCoveredFamilies"] = []auth.Role{auth.RoleEHR}
	p[svc+"BatchCreateDisclosures"] = []auth.Role{auth.RoleEHR}
	// The audit trail is for administrators.
	p[svc+"ListAuditEvents"] = []auth.Role{auth.RoleClinicAdmin}
	return p
}
