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
// intake was on hold, or Length or more before its booked start. That
// appointment did not take place.
func Superseded(r *referralsv1.Referral) bool {
	if r.GetState() != referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
		return false
	}
	if h := r.GetHistory(); len(h) > 0 && h[len(h)-1].GetToState() == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED &&
		h[len(h)-1].GetFromState() == referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD {
		return true
	}
	start, entry := r.GetIntakeAppointment().GetStartTime(), r.GetTreatmentEntryTime()
	return start != nil && entry != nil && !entry.AsTime().Add(Length).After(start.AsTime())
}

// Hidden reports whether r's intake appointment, were r in state st, is
// off the calendar: on hold (the booked time will not happen), cancelled,
// entered in error, or completed some other way than at it (Superseded).
// The calendar feed shows such an event cancelled, and its version counts
// each move in and out of here: both must read the same list.
func Hidden(st referralsv1.ReferralState, r *referralsv1.Referral) bool {
	switch st {
	case referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD,
		referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		return true
	case referralsv1.ReferralState_REFERRAL_STATE_COMPLETED:
		return Superseded(r)
	}
	return false
}
