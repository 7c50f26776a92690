// Package intake holds what the referral's readers (FHIR, calendar feeds)
// must agree on about an intake appointment.
package intake

import (
	"time"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// Length is how long an intake appointment is taken to last: Handoff
// records only its start.
const Length = time.Hour

// CompletedWithout reports whether r was completed without its intake
// appointment: none booked, or the booking superseded. No event (BSeR
// 5.1.4) took place; the fulfilment (7.0) did.
func CompletedWithout(r *referralsv1.Referral) bool {
	return r.GetState() == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED &&
		(r.GetIntakeAppointment().GetStartTime() == nil || Superseded(r))
}

// Superseded reports whether a completed referral's person entered
// treatment some other way than at its booked intake: admitted while the
// intake was on hold, after missing it, or Length or more before its
// booked start. That appointment did not take place.
func Superseded(r *referralsv1.Referral) bool {
	if r.GetState() != referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
		return false
	}
	switch CompletedFrom(r) {
	case referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:
		return true
	}
	start, entry := r.GetIntakeAppointment().GetStartTime(), r.GetTreatmentEntryTime()
	return start != nil && entry != nil && !entry.AsTime().Add(Length).After(start.AsTime())
}

// CompletedFrom is the state a completed referral was completed from, as
// its history tells; unspecified for one not completed or without it.
func CompletedFrom(r *referralsv1.Referral) referralsv1.ReferralState {
	if h := r.GetHistory(); r.GetState() == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED && len(h) > 0 &&
		h[len(h)-1].GetToState() == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
		return h[len(h)-1].GetFromState()
	}
	return referralsv1.ReferralState_REFERRAL_STATE_UNSPECIFIED
}

// Hidden reports whether r's intake appointment, were r in state st, is
// off the calendar: on hold (the booked time will not happen), cancelled,
// entered in error, or completed some other way than at it (Superseded),
// but for a missed one, which stays as it was when the person came in
// later, as it does when rebooked. The calendar feed shows such an event
// cancelled, and its version counts each move in and out of here: both
// must read the same list.
func Hidden(st referralsv1.ReferralState, r *referralsv1.Referral) bool {
	switch st {
	case referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD,
		referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		return true
	case referralsv1.ReferralState_REFERRAL_STATE_COMPLETED:
		return Superseded(r) && CompletedFrom(r) != referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW
	}
	return false
}
