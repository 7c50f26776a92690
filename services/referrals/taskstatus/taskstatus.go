// Package taskstatus holds the FHIR Task.status of each referral state, the
// closed-loop pattern of the Gravity and BSeR guides: one table for the
// referrals service (a referral's fhir_task_status, and the filter on it)
// and the FHIR API (the Task it serves, and a PUT's comparison), so that a
// search by status and the Task it finds never disagree.
package taskstatus

import (
	"maps"
	"slices"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

var byState = map[referralsv1.ReferralState]string{
	referralsv1.ReferralState_REFERRAL_STATE_REQUESTED: "requested",
	referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED:  "accepted",
	referralsv1.ReferralState_REFERRAL_STATE_REJECTED:  "rejected",
	referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED: "in-progress",
	referralsv1.ReferralState_REFERRAL_STATE_COMPLETED: "completed",
	// Booked and missed: in progress still (the business status says
	// unattended), not failed, which R4 and the closed-loop guides take as
	// final: the program may book it again, and an EHR closing its work
	// item on failed would never see that, nor a cancellation after it.
	referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:   "in-progress",
	referralsv1.ReferralState_REFERRAL_STATE_CANCELLED: "cancelled",
	referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD:   "on-hold",
	// The requester's own status.
	referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR: "entered-in-error",
}

// Of is the Task.status of a referral in state st; "draft" for none known.
func Of(st referralsv1.ReferralState) string {
	if s, ok := byState[st]; ok {
		return s
	}
	return "draft"
}

// known are FHIR R4's Task.status codes: those no referral state has
// (draft, received, ready, failed) are valid to search by, and match none.
var known = map[string]bool{
	"draft": true, "requested": true, "received": true, "accepted": true, "rejected": true, "ready": true,
	"cancelled": true, "in-progress": true, "on-hold": true, "failed": true, "completed": true, "entered-in-error": true,
}

// Known reports whether status is one of FHIR R4's Task.status codes.
func Known(status string) bool { return known[status] }

// Lookup is States for a filter: ok is false for a status FHIR does not
// have (a typo), which must be refused, not match nothing (or, with !=,
// everything).
func Lookup(status string) (states []int32, ok bool) { return States(status), Known(status) }

// States are the referral states whose Task.status is status, as numbers:
// a search by status compares the state column, which an index serves.
// None for a status no state has.
func States(status string) []int32 {
	var out []int32
	for _, v := range slices.Sorted(maps.Keys(referralsv1.ReferralState_name)) {
		if Of(referralsv1.ReferralState(v)) == status {
			out = append(out, v)
		}
	}
	return out
}
