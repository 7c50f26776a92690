package intake_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/referrals/intake"
)

// An appointment is off the calendar on hold, cancelled or entered in
// error, and completed only when the person entered treatment some other
// way than at it.
func TestHidden(t *testing.T) {
	start := time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)
	at := func(entry time.Time) *referralsv1.Referral {
		return &referralsv1.Referral{State: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED,
			IntakeAppointment:  &referralsv1.IntakeAppointment{StartTime: timestamppb.New(start)},
			TreatmentEntryTime: timestamppb.New(entry)}
	}
	kept, before := at(start.Add(10*time.Minute)), at(start.Add(-2*time.Hour))
	for _, c := range []struct {
		st   referralsv1.ReferralState
		r    *referralsv1.Referral
		want bool
	}{
		{referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, before, true},
	} {
		if got := intake.Hidden(c.st, c.r); got != c.want {
			t.Errorf("%v, entered %v: hidden %v, want %v", c.st, c.r.GetTreatmentEntryTime().AsTime(), got, c.want)
		}
	}
}
