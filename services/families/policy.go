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
	for _, m := range []string{"GetFamily", "ListFamilies"} {
		// The EHR reads the loved one and members (FHIR Patient and
		// RelatedPerson); the worker reads contact preferences and barriers.
		p[svc+m] = slices.Concat(readers, []auth.Role{auth.RoleEHR})
	}
	for _, m := range []string{"GetBarrier", "ListBarriers", "GetWarningSign", "ListWarningSigns",
		"ListSafetyScreens", "GetBoundary", "ListBoundaries"} {
		p[svc+m] = readers
	}
	for _, m := range []string{"CreateFamily", "UpdateFamily", "CreateBarrier", "UpdateBarrier",
		"DeleteBarrier", "ResolveBarrier", "CreateWarningSign", "CreateSafetyScreen", "CreateBoundary",
		"UpdateBoundary", "AgreeBoundary", "ActivateBoundary", "RetireBoundary"} {
		p[svc+m] = staff
	}
	// The boundary workflow records reinforcements after a declined
	// intervention.
	p[svc+"ReinforceBoundary"] = []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}
	p[svc+"DeleteFamily"] = []auth.Role{auth.RoleClinicAdmin}
	// The audit trail is for administrators.
	p[svc+"ListAuditEvents"] = []auth.Role{auth.RoleClinicAdmin}
	return p
}
