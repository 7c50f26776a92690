package interventions

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// An intake the person will not come to shows as cancelled: the referral
// was cancelled, put on hold, or completed by an admission an hour or more
// before the booked time. An admission just before it is the intake itself.
func TestIntakeEventCancelled(t *testing.T) {
	booked := time.Date(2026, 12, 10, 10, 0, 0, 0, time.UTC)
	since := booked.Add(-48 * time.Hour)
	for _, c := range []struct {
		name      string
		state     referralsv1.ReferralState
		entered   time.Time
		cancelled bool
	}{
		{"scheduled", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, time.Time{}, false},
		{"on hold", referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, time.Time{}, true},
		{"cancelled", referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, time.Time{}, true},
		{"entered in error", referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR, time.Time{}, true},
		{"admitted at the intake", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, booked.Add(-10 * time.Minute), false},
		{"admitted the day before", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, booked.Add(-24 * time.Hour), true},
		{"admitted an hour before", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, booked.Add(-time.Hour), true},
		{"admitted while on hold", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, booked.Add(time.Hour), true},
	} {
		ref := &referralsv1.Referral{Name: "clinics/north/referrals/r1", State: c.state,
			IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(booked)}, Etag: "3"}
		if !c.entered.IsZero() {
			ref.TreatmentEntryTime = timestamppb.New(c.entered)
		}
		if c.name == "admitted while on hold" {
			ref.History = []*referralsv1.ReferralEvent{{FromState: referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, ToState: c.state}}
		}
		e, ok := intakeEvent(ref, since)
		if !ok || e.cancelled != c.cancelled {
			t.Errorf("%s: event %v, cancelled %v; want cancelled %v", c.name, ok, e.cancelled, c.cancelled)
		}
	}
}
