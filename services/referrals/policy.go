package referrals

import (
	"slices"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
)

// Policy says which roles may call each method (least privilege).
func Policy() grpcserver.Policy {
	counselors := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin}
	p := grpcserver.Policy{}
	set := func(roles []auth.Role, methods ...string) {
		for _, m := range methods {
			p[svc+m] = roles
		}
	}
	// The directory is clinic data: everyone in the clinic may read it;
	// administrators keep it.
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker, auth.RoleEHR}, "GetProgram", "ListPrograms")
	set([]auth.Role{auth.RoleClinicAdmin}, "CreateProgram", "UpdateProgram", "DeleteProgram", "UndeleteProgram")
	// Programs report capacity through the EHR integration or an administrator.
	set([]auth.Role{auth.RoleClinicAdmin, auth.RoleEHR}, "ReportCapacity")
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}, "MatchPrograms",
		"HoldSlot", "GetHold", "ListHolds", "ReleaseHold", "ConvertHold", "CreateReferral", "UpdateReferral")
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker, auth.RoleEHR}, "GetReferral", "ListReferrals",
		// The receiving program's answers arrive through the EHR (closed loop).
		"AcceptReferral", "RejectReferral", "ScheduleReferral", "CompleteReferral", "MarkReferralNoShow", "PauseReferral")
	// Either side of the closed loop may cancel (Gravity): the referring
	// clinic, or the program through the EHR (the person can no longer be
	// served after all); the workflow then offers the next program.
	set(append(counselors, auth.RoleWorker, auth.RoleEHR), "CancelReferral")
	// A counselor's calendar feed shows their clients' intake appointments.
	p[svc+"ListReferrals"] = slices.Concat(p[svc+"ListReferrals"], []auth.Role{auth.RoleCalendarReader})
	// Outcome reports (counts over the clinic) are for administrators.
	p[svc+"SummarizeReferrals"] = []auth.Role{auth.RoleClinicAdmin}
	// The audit trail is for administrators.
	p[svc+"ListAuditEvents"] = []auth.Role{auth.RoleClinicAdmin}
	return p
}
