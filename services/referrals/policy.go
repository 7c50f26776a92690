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
	// The worker, which acts for every clinic, gets what its workflows
	// call and nothing more: a leaked worker token must not be able to
	// record a referral's outcome or call one off in any clinic.
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker}, "MatchPrograms",
		"HoldSlot", "ListHolds", "ReleaseHold", "ConvertHold", "CreateReferral")
	set(counselors, "GetHold", "UpdateReferral")
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker, auth.RoleEHR}, "GetReferral", "ListReferrals")
	// The receiving program's answers arrive through the EHR (closed loop).
	set([]auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleEHR},
		"AcceptReferral", "RejectReferral", "ScheduleReferral", "CompleteReferral", "MarkReferralNoShow", "PauseReferral",
		"RecordFollowUpService", "RetractFollowUpService")
	// Either side of the closed loop may cancel (Gravity): the referring
	// clinic, or the program through the EHR (the person can no longer be
	// served after all); the workflow then offers the next program.
	set(append(counselors, auth.RoleEHR), "CancelReferral")
	// Entered-in-error is the requester's to set (Gravity): the clinic's
	// staff, not the program, and not the worker.
	set(counselors, "MarkReferralEnteredInError")
	// A counselor's calendar feed shows their clients' intake appointments.
	p[svc+"ListReferrals"] = slices.Concat(p[svc+"ListReferrals"], []auth.Role{auth.RoleCalendarReader})
	// Outcome reports (counts over the clinic) are for administrators.
	p[svc+"SummarizeReferrals"] = []auth.Role{auth.RoleClinicAdmin}
	// The audit trail is for administrators.
	p[svc+"ListAuditEvents"] = []auth.Role{auth.RoleClinicAdmin}
	return p
}

// CreatesElsewhere implements grpcserver.Creator: HoldSlot names a program
// and makes a hold, ConvertHold names a hold and makes a referral. Each is
// recorded in the audit trail by what it made, so that "who made this
// hold (or referral)?" finds its creation.
func (s *Server) CreatesElsewhere(method string) bool {
	return method == svc+"HoldSlot" || method == svc+"ConvertHold"
}
